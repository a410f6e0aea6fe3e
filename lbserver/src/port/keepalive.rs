//! Server keepalive: a PING every interval, and the connection is given up
//! when one is not answered within the timeout (a client that vanished
//! without closing its socket holds nothing for long).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use h2::{Ping, PingPong};
use tokio::time::{Instant, Sleep};

pub(super) struct Pinger {
    ping_pong: PingPong,
    interval: Duration,
    timeout: Duration,
    /// When the next PING goes out, or (while one is out) when it expires.
    timer: Pin<Box<Sleep>>,
    awaiting_pong: bool,
}

impl Pinger {
    pub(super) fn new(ping_pong: PingPong, settings: super::Keepalive) -> Pinger {
        Pinger {
            ping_pong,
            interval: settings.interval,
            timeout: settings.timeout,
            timer: Box::pin(tokio::time::sleep(settings.interval)),
            awaiting_pong: false,
        }
    }

    /// Ready when the connection is to be closed: a PING went unanswered,
    /// or could not be sent.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.awaiting_pong {
                match self.ping_pong.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.awaiting_pong = false;
                        self.timer.as_mut().reset(Instant::now() + self.interval);
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
                return self.timer.as_mut().poll(cx);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.ping_pong.send_ping(Ping::opaque()).is_err() {
                return Poll::Ready(());
            }
            self.awaiting_pong = true;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}
