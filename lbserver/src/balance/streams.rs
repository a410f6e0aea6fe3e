//! Every BalanceLoad stream of one HTTP/2 connection, served from the
//! connection's own task.
//!
//! - Each stream's client side is an [`Inbound`] in one set; only the
//!   streams with news are polled.
//! - Each service the connection's streams follow is watched once per
//!   connection: a list change wakes the connection's task once, and the
//!   shared encoded list is handed to each of its streams (a reference
//!   count, not a copy or an encode).
//! - A stream holds at most one list waiting for flow-control window: a
//!   client that stops reading is sent the newest list when it reads
//!   again, never a backlog.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::Request;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::Status;

use super::inbound::{Event, Inbound};
use super::{OpenStream, Shared, frame_for, initial_frame};
use crate::port::grpc::{response_head, trailers, trailers_only};
use crate::registry::{ListSnapshot, Service};

/// A list bigger than this is sent once this much window is free (the
/// rest waits in h2's buffer: still at most one list per stream).
const SEND_SLICE: usize = 16 * 1024;

/// One service followed by streams of this connection.
struct Group {
    service: Arc<Service>,
    lists: WatchStream<Arc<ListSnapshot>>,
    current: Arc<ListSnapshot>,
}

/// A stream whose client asked for a service: its sending side.
struct Member {
    send: SendStream<Bytes>,
    group: usize,
    client: u64,
    sent_version: Option<u64>,
    /// The newest list, not sent yet for lack of window.
    next: Option<Bytes>,
    waiting: bool,
    _open: OpenStream,
}

impl Member {
    /// Hands the member's list to h2 if the stream has the window for it.
    /// `Ok(true)` when nothing is left waiting.
    fn flush(&mut self, service: &Service) -> Result<bool, h2::Error> {
        let Some(frame) = &self.next else {
            return Ok(true);
        };
        let needed = frame.len().min(SEND_SLICE);
        self.send.reserve_capacity(frame.len());
        if self.send.capacity() < needed {
            return Ok(false);
        }
        let frame = self.next.take().expect("checked above");
        self.send.send_data(frame, false)?;
        service.lists_sent.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// The BalanceLoad streams of one connection.
pub(crate) struct BalanceStreams {
    shared: Arc<Shared>,
    inbound: SelectAll<Inbound>,
    /// Streams whose initial request is still awaited.
    responders: HashMap<u32, SendResponse<Bytes>>,
    members: HashMap<u32, Member>,
    groups: Vec<Group>,
    /// Members with a list waiting for window.
    waiting: Vec<u32>,
    stopping: WatchStream<bool>,
    stopped: bool,
}

impl BalanceStreams {
    pub(crate) fn new(shared: Arc<Shared>, stopping: watch::Receiver<bool>) -> BalanceStreams {
        BalanceStreams {
            shared,
            inbound: SelectAll::new(),
            responders: HashMap::new(),
            members: HashMap::new(),
            groups: Vec::new(),
            waiting: Vec::new(),
            stopping: WatchStream::new(stopping),
            stopped: false,
        }
    }

    /// Takes a new BalanceLoad stream.
    pub(crate) fn accept(
        &mut self,
        request: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) {
        if self.stopped {
            let _ = trailers_only(
                &mut respond,
                &Status::unavailable("the balancer is shutting down"),
            );
            return;
        }
        let id = respond.stream_id().as_u32();
        self.inbound
            .push(Inbound::new(id, request.into_body(), self.shared.clone()));
        self.responders.insert(id, respond);
    }

    /// Polls the clients' sides, the lists and the window of streams
    /// waiting for it. Never ready: the streams live as long as the
    /// connection.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) {
        if !self.stopped {
            while let Poll::Ready(Some(stopping)) = self.stopping.poll_next_unpin(cx) {
                if stopping {
                    self.stop();
                    return;
                }
            }
        }
        while let Poll::Ready(Some((id, event))) = self.inbound.poll_next_unpin(cx) {
            match event {
                Event::Opened(service, client) => self.open(id, service, client),
                Event::Ended(status) => self.end(id, status),
            }
        }
        for g in 0..self.groups.len() {
            let mut changed = false;
            while let Poll::Ready(Some(list)) = self.groups[g].lists.poll_next_unpin(cx) {
                self.groups[g].current = list;
                changed = true;
            }
            if changed {
                self.offer_all(g);
            }
        }
        self.poll_waiting(cx);
    }

    fn open(&mut self, id: u32, service: Arc<Service>, client: u64) {
        let Some(mut respond) = self.responders.remove(&id) else {
            return;
        };
        let open = OpenStream::new(service.clone(), client);
        let mut send = match respond.send_response(response_head(), false) {
            Ok(send) => send,
            Err(_) => return,
        };
        if send.send_data(initial_frame(&service), false).is_err() {
            return;
        }
        let group = self.group_of(service);
        let mut member = Member {
            send,
            group,
            client,
            sent_version: None,
            next: None,
            waiting: false,
            _open: open,
        };
        let current = self.groups[group].current.clone();
        if offer(
            &mut member,
            &self.groups[group].service,
            &current,
            &mut self.waiting,
            id,
        )
        .is_ok()
        {
            self.members.insert(id, member);
        }
    }

    fn group_of(&mut self, service: Arc<Service>) -> usize {
        if let Some(g) = self
            .groups
            .iter()
            .position(|g| Arc::ptr_eq(&g.service, &service))
        {
            return g;
        }
        let lists = service.subscribe();
        let current = lists.borrow().clone();
        self.groups.push(Group {
            service,
            // The first value is the current one, already known.
            lists: WatchStream::from_changes(lists),
            current,
        });
        self.groups.len() - 1
    }

    fn end(&mut self, id: u32, status: Option<Status>) {
        if let Some(mut respond) = self.responders.remove(&id) {
            if let Some(status) = status {
                let _ = trailers_only(&mut respond, &status);
            }
            return;
        }
        if let Some(mut member) = self.members.remove(&id) {
            let status = status.unwrap_or_else(|| Status::ok(""));
            let _ = member.send.send_trailers(trailers(&status));
        }
    }

    fn offer_all(&mut self, g: usize) {
        let group = &self.groups[g];
        let waiting = &mut self.waiting;
        self.members.retain(|&id, member| {
            member.group != g || offer(member, &group.service, &group.current, waiting, id).is_ok()
        });
    }

    fn poll_waiting(&mut self, cx: &mut Context<'_>) {
        let members = &mut self.members;
        let groups = &self.groups;
        self.waiting.retain(|id| {
            let Some(member) = members.get_mut(id) else {
                return false;
            };
            let service = &groups[member.group].service;
            loop {
                match member.flush(service) {
                    Ok(true) => {
                        member.waiting = false;
                        return false;
                    }
                    Ok(false) => {}
                    Err(_) => {
                        members.remove(id);
                        return false;
                    }
                }
                match member.send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(_)) | None) => {
                        members.remove(id);
                        return false;
                    }
                    Poll::Pending => return true,
                }
            }
        });
    }

    /// Ends every stream with UNAVAILABLE (clients go to another replica)
    /// and every new one from now on.
    fn stop(&mut self) {
        self.stopped = true;
        let status = Status::unavailable("the balancer is shutting down");
        for (_, mut respond) in self.responders.drain() {
            let _ = trailers_only(&mut respond, &status);
        }
        for (_, mut member) in self.members.drain() {
            let _ = member.send.send_trailers(trailers(&status));
        }
        self.inbound = SelectAll::new();
        self.waiting.clear();
        self.groups.clear();
    }
}

/// Gives `member` the list `snapshot` unless it has it; an error when the
/// stream is gone.
fn offer(
    member: &mut Member,
    service: &Service,
    snapshot: &ListSnapshot,
    waiting: &mut Vec<u32>,
    id: u32,
) -> Result<(), h2::Error> {
    if member.sent_version == Some(snapshot.version) {
        return Ok(());
    }
    member.sent_version = Some(snapshot.version);
    member.next = Some(frame_for(service, snapshot, member.client));
    if !member.flush(service)? && !member.waiting {
        member.waiting = true;
        waiting.push(id);
    }
    Ok(())
}
