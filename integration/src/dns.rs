//! An in-process authoritative DNS server on `127.0.0.1`, whose records a test
//! changes while it runs.
//!
//! It serves one zone over UDP and TCP on the same port. Record sets are
//! replaced whole, with the TTL the test chooses, so a resolver under test
//! sees exactly what the test put there. The server counts the queries it
//! receives and can be made silent (it then drops every query, so clients
//! time out), which lets tests check refresh rates and back-off.
//!
//! ```no_run
//! # async fn demo() -> Result<(), waypost_integration::HarnessError> {
//! use std::net::Ipv4Addr;
//! use waypost_integration::dns::DnsServer;
//!
//! let dns = DnsServer::start("test.").await?;
//! dns.set_a("orders.test.", &[Ipv4Addr::LOCALHOST], 5).await?;
//! println!("ask {} for orders.test.", dns.addr());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use parking_lot::Mutex;
use tokio::net::{TcpListener, UdpSocket};

use crate::HarnessError;

/// One SRV target: `priority weight port target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative weight among targets of equal priority.
    pub weight: u16,
    /// The port the target listens on.
    pub port: u16,
    /// The target host name (fully qualified, e.g. `lb1.test.`).
    pub target: String,
}

/// A running DNS server; it stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    state: Arc<HandlerState>,
    serial: AtomicU32,
    server: Server<CountingHandler>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct HandlerState {
    silent: AtomicBool,
    queries: Mutex<HashMap<(String, RecordType), u64>>,
}

/// Wraps the catalog: counts queries, and drops them while silent.
struct CountingHandler {
    catalog: Catalog,
    state: Arc<HandlerState>,
}

#[async_trait::async_trait]
impl RequestHandler for CountingHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        for query in request.queries.queries() {
            let key = (
                query.name().to_string().to_ascii_lowercase(),
                query.query_type(),
            );
            *self.state.queries.lock().entry(key).or_default() += 1;
        }
        if self.state.silent.load(Ordering::SeqCst) {
            // Answer nothing: the client sees a timeout.
            return ResponseInfo::from(Header {
                metadata: request.metadata,
                counts: HeaderCounts::default(),
            });
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

impl DnsServer {
    /// Starts a server for the zone `origin` (e.g. `"test."`) on
    /// `127.0.0.1`, UDP and TCP on one free port.
    pub async fn start(origin: &str) -> Result<DnsServer, HarnessError> {
        let origin_name = fqdn(origin)?;
        let mut zone: InMemoryZoneHandler =
            InMemoryZoneHandler::empty(origin_name.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_ascii("ns.")?.append_domain(&origin_name)?,
            Name::from_ascii("hostmaster.")?.append_domain(&origin_name)?,
            1,
            3600,
            600,
            86400,
            0,
        );
        zone.upsert_mut(
            Record::from_rdata(origin_name.clone(), 0, RData::SOA(soa)),
            1,
        );
        let zone = Arc::new(zone);

        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin_name), vec![zone.clone()]);
        let state = Arc::new(HandlerState::default());
        let handler = CountingHandler {
            catalog,
            state: state.clone(),
        };

        // UDP on a free port, then TCP on the same one (retry if it is taken).
        let mut last_err = None;
        for _ in 0..16 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    let mut server = Server::new(handler);
                    server.register_socket(udp);
                    server.register_listener(tcp, Duration::from_secs(5), 64);
                    return Ok(DnsServer {
                        addr,
                        zone,
                        state,
                        serial: AtomicU32::new(1),
                        server,
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(HarnessError::Io(
            last_err.expect("the loop ran at least once"),
        ))
    }

    /// The address to send queries to (UDP or TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the A records of `name`.
    pub async fn set_a(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) -> Result<(), HarnessError> {
        let rdata = ips.iter().map(|ip| RData::A(A(*ip))).collect();
        self.set_records(name, RecordType::A, rdata, ttl).await
    }

    /// Replaces the AAAA records of `name`.
    pub async fn set_aaaa(
        &self,
        name: &str,
        ips: &[Ipv6Addr],
        ttl: u32,
    ) -> Result<(), HarnessError> {
        let rdata = ips.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect();
        self.set_records(name, RecordType::AAAA, rdata, ttl).await
    }

    /// Replaces the SRV records of `name` (e.g. `_grpclb._tcp.orders.test.`).
    pub async fn set_srv(
        &self,
        name: &str,
        targets: &[SrvTarget],
        ttl: u32,
    ) -> Result<(), HarnessError> {
        let mut rdata = Vec::with_capacity(targets.len());
        for t in targets {
            rdata.push(RData::SRV(SRV::new(
                t.priority,
                t.weight,
                t.port,
                fqdn(&t.target)?,
            )));
        }
        self.set_records(name, RecordType::SRV, rdata, ttl).await
    }

    /// Publishes a grpclb balancer for `name` the way gRPC's DNS resolvers
    /// look for one: `_grpclb._tcp.<name>` SRV → `<balancer>:<port>`, and
    /// `<balancer>` A → 127.0.0.1 (names fully qualified, e.g.
    /// `movies.test.`, `lb.test.`).
    pub async fn set_grpclb_balancer(
        &self,
        name: &str,
        balancer: &str,
        port: u16,
        ttl: u32,
    ) -> Result<(), HarnessError> {
        self.set_a(balancer, &[Ipv4Addr::LOCALHOST], ttl).await?;
        let target = SrvTarget {
            priority: 0,
            weight: 0,
            port,
            target: balancer.into(),
        };
        self.set_srv(&format!("_grpclb._tcp.{name}"), &[target], ttl)
            .await
    }

    /// Replaces the TXT records of `name` with one record holding `text`,
    /// split into the 255-byte character-strings DNS requires.
    pub async fn set_txt(&self, name: &str, text: &str, ttl: u32) -> Result<(), HarnessError> {
        let strings = split_character_strings(text);
        self.set_records(
            name,
            RecordType::TXT,
            vec![RData::TXT(TXT::new(strings))],
            ttl,
        )
        .await
    }

    /// Replaces the TXT records of `name` with one record made of exactly
    /// these character-strings (each must be at most 255 bytes).
    pub async fn set_txt_strings(
        &self,
        name: &str,
        strings: &[&str],
        ttl: u32,
    ) -> Result<(), HarnessError> {
        let strings = strings.iter().map(|s| s.to_string()).collect();
        self.set_records(
            name,
            RecordType::TXT,
            vec![RData::TXT(TXT::new(strings))],
            ttl,
        )
        .await
    }

    /// Removes every record of `rtype` at `name`; queries then get an empty
    /// answer (or NXDOMAIN when the name has no records left at all).
    pub async fn remove(&self, name: &str, rtype: RecordType) -> Result<(), HarnessError> {
        let key = RrKey::new(LowerName::new(&fqdn(name)?), rtype);
        self.zone.records_mut().await.remove(&key);
        Ok(())
    }

    /// Replaces the record set of `rtype` at `name` with `rdata`.
    pub async fn set_records(
        &self,
        name: &str,
        rtype: RecordType,
        rdata: Vec<RData>,
        ttl: u32,
    ) -> Result<(), HarnessError> {
        let name = fqdn(name)?;
        let serial = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
        let mut set = RecordSet::new(name.clone(), rtype, serial);
        set.set_records(
            rdata
                .into_iter()
                .map(|d| Record::from_rdata(name.clone(), ttl, d))
                .collect(),
        );
        set.set_ttl(ttl);
        let key = RrKey::new(LowerName::new(&name), rtype);
        let mut records = self.zone.records_mut().await;
        if set.is_empty() {
            records.remove(&key);
        } else {
            records.insert(key, Arc::new(set));
        }
        Ok(())
    }

    /// While silent, the server answers nothing (clients time out).
    pub fn set_silent(&self, silent: bool) {
        self.state.silent.store(silent, Ordering::SeqCst);
    }

    /// How many queries for `name` and `rtype` the server has received.
    pub fn queries(&self, name: &str, rtype: RecordType) -> u64 {
        let name = name.to_ascii_lowercase();
        let name = if name.ends_with('.') {
            name
        } else {
            format!("{name}.")
        };
        self.state
            .queries
            .lock()
            .get(&(name, rtype))
            .copied()
            .unwrap_or(0)
    }

    /// Stops serving and waits for the server's tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.server.shutdown_token().cancel();
    }
}

/// Parses `name` as a fully qualified domain name.
fn fqdn(name: &str) -> Result<Name, HarnessError> {
    let mut n = Name::from_ascii(name)?;
    n.set_fqdn(true);
    Ok(n)
}

/// Splits `text` into character-strings of at most 255 bytes, on char
/// boundaries.
fn split_character_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if current.len() + c.len_utf8() > 255 {
            out.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() || out.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split_character_strings;

    #[test]
    fn txt_strings_are_split_at_255_bytes() {
        let text = "x".repeat(600);
        let parts = split_character_strings(&text);
        assert_eq!(
            parts.iter().map(String::len).collect::<Vec<_>>(),
            vec![255, 255, 90]
        );
        assert_eq!(parts.concat(), text);
        assert_eq!(split_character_strings(""), vec![String::new()]);
    }
}
