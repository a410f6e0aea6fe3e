//! Errors of data connections, as typed values.

use std::io;
use std::time::Duration;

use crate::frame::FrameError;
use crate::handshake::HandshakeError;

/// What went wrong on a data connection or exchange. Cloneable, so one
/// connection failure can be reported to every party that uses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The transport failed.
    #[error("connection I/O ({kind:?}): {message}")]
    Io {
        /// The I/O error kind.
        kind: io::ErrorKind,
        /// Its text.
        message: String,
    },
    /// Nothing arrived (not even a heartbeat) for the idle timeout.
    #[error("no progress for {0:?}: the peer is gone or stuck")]
    Timeout(Duration),
    /// The peer broke the framing rules.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A bad frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The handshake failed (the reason, when the peer gave one, is in it).
    #[error("handshake: {0}")]
    Handshake(String),
    /// The peer's error trailer (or our own handler's status).
    #[error("{code:?}: {message}")]
    Status {
        /// gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The receiver of our body stopped receiving it.
    #[error("the peer cancelled the transfer")]
    CancelledByPeer,
    /// The peer reset the connection.
    #[error("the peer reset the connection: {0}")]
    Reset(String),
    /// The connection ended where more was due.
    #[error("connection closed in the middle of an exchange")]
    Closed,
    /// The body's END disagrees with what arrived.
    #[error("body integrity: {0}")]
    Integrity(String),
    /// No backend could be picked in time.
    #[error("no ready backend: {0}")]
    Unavailable(String),
}

impl Error {
    pub(crate) fn io(e: &io::Error) -> Error {
        Error::Io {
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// The gRPC status code that best describes it.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Status { code, .. } => *code,
            Error::Timeout(_) => tonic::Code::DeadlineExceeded,
            Error::CancelledByPeer => tonic::Code::Cancelled,
            Error::Protocol(_) | Error::Frame(_) | Error::Integrity(_) => tonic::Code::DataLoss,
            Error::Io { .. }
            | Error::Handshake(_)
            | Error::Reset(_)
            | Error::Closed
            | Error::Unavailable(_) => tonic::Code::Unavailable,
        }
    }
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Error {
        Error::Handshake(e.to_string())
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::io(&e)
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        Error::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        match e {
            Error::Status { code, message } => tonic::Status::new(code, message),
            other => tonic::Status::new(other.code(), other.to_string()),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io { kind, .. } => *kind,
            Error::Timeout(_) => io::ErrorKind::TimedOut,
            Error::Closed => io::ErrorKind::UnexpectedEof,
            Error::Reset(_) => io::ErrorKind::ConnectionReset,
            Error::Protocol(_) | Error::Frame(_) | Error::Integrity(_) => {
                io::ErrorKind::InvalidData
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
