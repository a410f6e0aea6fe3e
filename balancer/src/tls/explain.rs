//! Handshake failures in words: which of the usual causes it was.

use std::io;

use tokio_rustls::rustls::{self, AlertDescription, CertificateError};

/// `error` (from a TLS handshake, or the first read after it) as an I/O
/// error whose message names the cause.
pub(crate) fn explain(error: io::Error) -> io::Error {
    let kind = error.kind();
    let message = match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(tls) => describe(tls),
        None if kind == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the TLS handshake (a plaintext server?)"
                .to_owned()
        }
        None => return error,
    };
    io::Error::new(kind, message)
}

/// After the handshake: `error` worded if it is a TLS error (an alert),
/// else as it is (a peer closing without `close_notify` is not a handshake
/// problem) — unless the server asked for a client certificate we did not
/// have (`certificate_requested`) and then closed or reset the connection:
/// the likely cause is named, since the alert that says so can be lost.
pub(crate) fn explain_after_handshake(error: io::Error, certificate_requested: bool) -> io::Error {
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(tls) => io::Error::new(error.kind(), describe(tls)),
        None if certificate_requested
            && matches!(
                error.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            io::Error::new(
                error.kind(),
                format!(
                    "TLS: the server asked for a client certificate, which this channel has none of, and then closed the connection ({error})"
                ),
            )
        }
        None => error,
    }
}

/// The cause of a rustls error, in words.
pub(crate) fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            CertificateError::UnknownIssuer => {
                "TLS: the server's certificate is not signed by a trusted CA (unknown issuer)".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "TLS: the server's certificate is not valid for the name verified (name mismatch)"
                    .into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS: the server's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS: the server's certificate is not valid yet".into()
            }
            other => format!("TLS: the server's certificate was rejected: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => {
                "TLS: the server requires a client certificate (alert certificate_required)".into()
            }
            AlertDescription::HandshakeFailure => {
                "TLS: the server refused the handshake (alert handshake_failure; a client certificate may be required)".into()
            }
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown => {
                format!("TLS: the server rejected our client certificate (alert {alert:?})")
            }
            AlertDescription::NoApplicationProtocol => {
                "TLS: the server does not speak h2 (alert no_application_protocol)".into()
            }
            other => format!("TLS: the server sent alert {other:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "TLS: the server did not answer with TLS (a plaintext server?)".into()
        }
        other => format!("TLS: {other}"),
    }
}

/// The cause of a server-side handshake failure, in words (what a server
/// logs about a client it refused).
pub(crate) fn describe_server(error: &rustls::Error) -> String {
    match error {
        rustls::Error::NoCertificatesPresented => {
            "TLS: the client sent no certificate, and one is required".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "TLS: the client's certificate is not signed by a trusted client CA".into()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "TLS: the client's certificate has expired".into(),
        rustls::Error::InvalidCertificate(other) => {
            format!("TLS: the client's certificate was rejected: {other:?}")
        }
        rustls::Error::NoApplicationProtocol => {
            "TLS: the client offers none of our ALPN protocols".into()
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "TLS: the client did not speak TLS (a plaintext client?)".into()
        }
        rustls::Error::AlertReceived(alert) => {
            format!(
                "TLS: the client refused the handshake (alert {alert:?}; does it trust our certificate?)"
            )
        }
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_causes_are_named() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown issuer",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "name mismatch",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "expired",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                "requires a client certificate",
            ),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "plaintext server",
            ),
        ];
        for (error, needle) in cases {
            let io = explain(io::Error::new(io::ErrorKind::InvalidData, error));
            assert!(io.to_string().contains(needle), "{io}");
        }
        let eof = explain(io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
        assert!(eof.to_string().contains("plaintext"), "{eof}");
        let reset = || io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(explain_after_handshake(reset(), false).to_string(), "reset");
        let asked = explain_after_handshake(reset(), true).to_string();
        assert!(asked.contains("asked for a client certificate"), "{asked}");
    }
}
