//! Where a model's speeches are written: the in-process worker, or an OpenAI-compatible
//! server. The service talks to both through this one type.

use tokio::sync::mpsc::UnboundedReceiver;

use super::queue::{Busy, Event, Generator};
use super::remote::Remote;
use mananera_engine::SamplingParams;

/// `engine.backend`, running.
pub enum Backend {
    Local(Generator),
    Remote(Remote),
}

impl Backend {
    /// Queues a request in the voice whose header is `header`, or answers at once that it
    /// cannot be taken now.
    pub fn submit(
        &self,
        header: &str,
        prompt: &str,
        params: &SamplingParams,
    ) -> Result<UnboundedReceiver<Event>, Busy> {
        match self {
            Backend::Local(g) => g.submit(header, prompt.to_string(), params.clone()),
            Backend::Remote(r) => r.submit(header, prompt, params),
        }
    }

    /// Requests waiting for a place.
    pub fn queue_depth(&self) -> usize {
        match self {
            Backend::Local(g) => g.queue_depth(),
            Backend::Remote(r) => r.queue_depth(),
        }
    }

    /// Requests being written.
    pub fn batch_size(&self) -> usize {
        match self {
            Backend::Local(g) => g.batch_size(),
            Backend::Remote(r) => r.batch_size(),
        }
    }

    /// Stops taking requests; those taken finish.
    pub fn close(&self) {
        match self {
            Backend::Local(g) => g.close(),
            Backend::Remote(r) => r.close(),
        }
    }

    /// True once it stopped taking requests.
    pub fn is_closed(&self) -> bool {
        match self {
            Backend::Local(g) => g.is_closed(),
            Backend::Remote(r) => r.is_closed(),
        }
    }

    /// True once closed and every request taken has ended.
    pub fn is_stopped(&self) -> bool {
        match self {
            Backend::Local(g) => g.is_stopped(),
            Backend::Remote(r) => r.is_stopped(),
        }
    }

    /// Why requests are refused now (a generation server that is down), and for how long.
    pub fn unavailable(&self) -> Option<(String, u64)> {
        match self {
            Backend::Local(_) => None,
            Backend::Remote(r) => r.unavailable(),
        }
    }

    /// Stops taking requests and lets those taken finish within `queue.grace_s`.
    pub async fn shut_down(&self) {
        match self {
            Backend::Local(g) => g.shut_down().await,
            Backend::Remote(r) => r.shut_down().await,
        }
    }
}
