//! The endpoint value format of grpc-go's etcd naming package:
//! `{"Op":0,"Addr":"10.0.0.7:50051","Metadata":<any JSON>}` under the key
//! `<service>/<addr>`. Field names match case-insensitively, unknown fields
//! are ignored, and anything else is a typed rejection (never a panic).

use std::net::SocketAddr;

use serde_json::Value;

use crate::state::{Address, Endpoint};
use crate::target::{Host, parse_host_port};

/// The largest value we parse; etcd's own request limit is 1.5 MiB.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// What a value asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueOp {
    /// `Op: 0`: this endpoint exists.
    Add(Endpoint),
    /// `Op: 1`: the endpoint under this key is gone.
    Delete,
}

/// Parses one etcd value.
pub fn parse_value(value: &[u8]) -> Result<ValueOp, String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "value of {} bytes exceeds {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
    let json: Value = serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(fields) = json else {
        return Err("not a JSON object".into());
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let op = match field("Op") {
        None | Some(Value::Null) => 0,
        Some(op) => op
            .as_u64()
            .ok_or_else(|| format!("Op is {op}, not 0 or 1"))?,
    };
    match op {
        0 => {}
        1 => return Ok(ValueOp::Delete),
        other => return Err(format!("unknown Op {other}")),
    }
    let addr = match field("Addr") {
        Some(Value::String(addr)) if !addr.is_empty() => addr,
        Some(Value::String(_)) | None | Some(Value::Null) => return Err("missing Addr".into()),
        Some(other) => return Err(format!("Addr is {other}, not a string")),
    };
    let address = parse_addr(addr)?;
    let metadata = field("Metadata").filter(|m| !m.is_null()).cloned();
    Ok(ValueOp::Add(Endpoint {
        addresses: vec![address],
        metadata,
    }))
}

/// `ip:port` becomes a TCP address; `host:port` is passed through to the
/// connector; anything else is rejected.
fn parse_addr(addr: &str) -> Result<Address, String> {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return Ok(Address::Tcp(socket));
    }
    if !addr.contains(':') {
        return Err(format!("Addr {addr:?} has no port"));
    }
    match parse_host_port(addr, 0) {
        Ok((Host::Ip(ip), port)) => Ok(Address::Tcp(SocketAddr::new(ip, port))),
        Ok((Host::Name(_), _)) => Ok(Address::Unresolved(addr.to_owned())),
        Err(e) => Err(format!("Addr {addr:?}: {e}")),
    }
}

/// The JSON value grpc-go writes for an endpoint (`Op` 0).
pub fn encode_value(addr: &str, metadata: Option<&Value>) -> String {
    serde_json::json!({ "Op": 0, "Addr": addr, "Metadata": metadata }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tcp(s: &str) -> Address {
        Address::Tcp(s.parse().unwrap())
    }

    #[test]
    fn go_format_values_parse() {
        let cases: Vec<(&str, ValueOp)> = vec![
            (
                r#"{"Op":0,"Addr":"10.0.0.7:50051","Metadata":null}"#,
                ValueOp::Add(Endpoint {
                    addresses: vec![tcp("10.0.0.7:50051")],
                    metadata: None,
                }),
            ),
            (
                r#"{"Op":0,"Addr":"10.0.0.7:50051","Metadata":{"zone":"a","weight":3}}"#,
                ValueOp::Add(Endpoint {
                    addresses: vec![tcp("10.0.0.7:50051")],
                    metadata: Some(json!({"zone":"a","weight":3})),
                }),
            ),
            (
                r#"{"op":0,"addr":"[::1]:80","metadata":"x","extra":true}"#,
                ValueOp::Add(Endpoint {
                    addresses: vec![tcp("[::1]:80")],
                    metadata: Some(json!("x")),
                }),
            ),
            (
                r#"{"Addr":"orders.internal:443"}"#,
                ValueOp::Add(Endpoint {
                    addresses: vec![Address::Unresolved("orders.internal:443".into())],
                    metadata: None,
                }),
            ),
            (r#"{"Op":1,"Addr":"10.0.0.7:50051"}"#, ValueOp::Delete),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_value(value.as_bytes()).unwrap(), expected, "{value}");
        }
    }

    #[test]
    fn garbage_values_are_rejected_with_reasons() {
        let huge = format!(
            r#"{{"Addr":"1.2.3.4:5","Metadata":"{}"}}"#,
            "x".repeat(MAX_VALUE_BYTES)
        );
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "not JSON"),
            (b"\xff\xfe", "not JSON"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"Op":0}"#, "missing Addr"),
            (br#"{"Op":0,"Addr":""}"#, "missing Addr"),
            (br#"{"Op":0,"Addr":7}"#, "not a string"),
            (br#"{"Op":2,"Addr":"1.2.3.4:5"}"#, "unknown Op 2"),
            (br#"{"Op":"add","Addr":"1.2.3.4:5"}"#, "not 0 or 1"),
            (br#"{"Addr":"1.2.3.4"}"#, "no port"),
            (br#"{"Addr":"bad host:80"}"#, "invalid host name"),
            (huge.as_bytes(), "exceeds"),
        ];
        for (value, needle) in cases {
            let err = parse_value(value).unwrap_err();
            assert!(
                err.contains(needle),
                "{:?}: {err}",
                String::from_utf8_lossy(&value[..value.len().min(40)])
            );
        }
    }

    #[test]
    fn encoded_values_read_back() {
        let encoded = encode_value("127.0.0.1:9", Some(&json!({"v":1})));
        assert_eq!(
            serde_json::from_str::<Value>(&encoded).unwrap(),
            json!({"Op":0,"Addr":"127.0.0.1:9","Metadata":{"v":1}})
        );
        assert_eq!(
            parse_value(encoded.as_bytes()).unwrap(),
            ValueOp::Add(Endpoint {
                addresses: vec![tcp("127.0.0.1:9")],
                metadata: Some(json!({"v":1}))
            })
        );
    }
}
