//! The credentials and trace context every call of a client carries.
use tonic::Status;

/// Adds `authorization: Bearer <token>` to every call (nothing without a token), and the
/// caller's trace context. The token is never shown in `Debug` output.
#[derive(Clone, Default)]
pub struct Bearer(pub(super) Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(<redacted>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        // The caller's trace, when spans are exported (W3C `traceparent`).
        crate::trace::inject_current(req.metadata_mut());
        Ok(req)
    }
}
