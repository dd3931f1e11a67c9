//! SDK errors become [`S3Error`]s here, and only here: each one names its request and what
//! the server said.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::s3::{Request, S3Error};

/// The error mapper for one request: `.map_err(map_err(Request::object("HeadObject", key)))`.
/// The one place where an SDK error becomes an [`S3Error`], so each one names its operation and
/// object (or prefix) along with what the server said.
pub(super) fn map_err<E>(req: Request) -> impl FnOnce(SdkError<E, HttpResponse>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |e| sdk_error(req, e)
}

/// Map an SDK error to [`S3Error`] by HTTP status and error code.
pub(super) fn sdk_error<E>(req: Request, e: SdkError<E, HttpResponse>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let (code, message) = (se.err().code(), se.err().message());
            // A success status with an error: the answer did not parse (e.g. a listing whose
            // XML holds a control character). It has no code or message to show, only a cause.
            if code.is_none() && message.is_none() && (200..300).contains(&status) {
                return S3Error::Unreadable {
                    req,
                    status,
                    cause: causes(se.err()),
                };
            }
            classify(
                req,
                status,
                code.unwrap_or("").to_owned(),
                message.unwrap_or("").to_owned(),
            )
        }
        SdkError::ResponseError(re) => {
            let status = re.raw().status().as_u16();
            let cause = causes(&e);
            if (200..300).contains(&status) {
                return S3Error::Unreadable { req, status, cause };
            }
            classify(
                req,
                status,
                String::new(),
                format!("unreadable answer: {cause}"),
            )
        }
        SdkError::TimeoutError(_) => S3Error::Transport(format!("{req}: request timed out")),
        SdkError::DispatchFailure(df) => S3Error::Transport(format!(
            "{req}: {}",
            df.as_connector_error()
                .map(|c| causes(c))
                .unwrap_or_else(|| "dispatch failure".into())
        )),
        // (Display, never Debug: the Debug of an answer holds its headers, the key's MD5)
        _ => S3Error::Other {
            req,
            status: 0,
            code: "Client".into(),
            message: causes(&e).chars().take(300).collect(),
        },
    }
}

/// An error and its sources, `outer: inner: innermost` (Display only).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        // (wrappers often repeat their source's text)
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

/// Status + code → error kind. 400 without a more specific code on a keyed request means the
/// key does not open the object (Garage; HEAD answers have no body, so no code at all).
pub(crate) fn classify(req: Request, status: u16, code: String, message: String) -> S3Error {
    match (status, code.as_str()) {
        (404, "NoSuchBucket") => S3Error::NoSuchBucket,
        // an upload that vanished (or a retried Complete that already succeeded): an I/O
        // error of the write, not a missing file
        (404, "NoSuchUpload") => S3Error::Other {
            req,
            status,
            code,
            message,
        },
        (404, _) => S3Error::NotFound,
        (400, "" | "InvalidRequest") => S3Error::WrongKey,
        (403, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken") => {
            S3Error::BadCredentials(code)
        }
        // Garage says AccessDenied with "Forbidden: Invalid signature" / "No such key: GK…"
        (403, _)
            if message.contains("signature")
                || message.contains("Signature")
                || message.contains("No such key") =>
        {
            S3Error::BadCredentials(message)
        }
        (403, _) => S3Error::AccessDenied(match (code.is_empty(), message.is_empty()) {
            (true, true) => format!("{req}"),
            (true, false) => format!("{req}: {message}"),
            (false, true) => format!("{req}: {code}"),
            (false, false) => format!("{req}: {code}: {message}"),
        }),
        (412, _) => S3Error::PreconditionFailed,
        _ => S3Error::Other {
            req,
            status,
            code,
            message,
        },
    }
}

/// A server answer to `req` that breaks the protocol (missing header, garbled body).
pub(super) fn malformed(req: Request, what: impl Into<String>) -> S3Error {
    S3Error::Other {
        req,
        status: 0,
        code: "MalformedResponse".into(),
        message: what.into(),
    }
}
