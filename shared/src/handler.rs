//! What every request handler is and what it leaves behind: the [`Handler`] signature the
//! endpoints have and both the CGI and the FastCGI loop call, the jobs a handler leaves to
//! run once its answer is complete ([`after_answer`]), and the answer a watchdog gives for
//! a request that overran its deadline ([`overrun_response`]). It sits below `run` and
//! `fastcgi` so that neither needs the other. It never reads or writes state and never
//! writes to the client itself: the loops above it do.

use crate::cgi::{Request, Response};
use std::io::Read;

/// An endpoint: request in, response out.
pub type Handler = fn(Request, &mut dyn Read) -> Response;

thread_local! {
    /// Work to run once the answer of the request on this thread is complete.
    static AFTER_ANSWER: std::cell::RefCell<Vec<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `job` after this request's answer is complete: under CGI once the answer is
/// written and stdout (and stderr, which some servers wait for too) are closed, so the
/// visitor never waits for it; under FastCGI after the answer's records are sent. The job
/// must bound its own work.
pub fn after_answer(job: impl FnOnce() + 'static) {
    AFTER_ANSWER.with(|a| a.borrow_mut().push(Box::new(job)));
}

/// Runs the jobs [`after_answer`] collected on this thread.
pub(crate) fn run_after_answer() {
    let jobs = AFTER_ANSWER.with(|a| std::mem::take(&mut *a.borrow_mut()));
    for job in jobs {
        job();
    }
}

pub(crate) fn has_after_answer() -> bool {
    AFTER_ANSWER.with(|a| !a.borrow().is_empty())
}

/// The answer for a request that overran its deadline (see `deadline`), given by a
/// watchdog while the request is stuck in a call without a timeout. It cannot know more
/// than whether the message was saved, and says exactly that.
pub fn overrun_response(saved: bool) -> Response {
    let (status, text) = if saved {
        (
            202,
            "Your message has been received and saved. It will be delivered shortly; you do not need to send it again.\n\
             Ihre Nachricht ist angekommen und gespeichert. Sie wird in Kürze zugestellt; Sie müssen sie nicht erneut senden.\n",
        )
    } else {
        (
            503,
            "The server took too long to answer. If you were sending a message, it was NOT received: please try again in a few minutes.\n\
             Der Server hat zu lange gebraucht. Falls Sie eine Nachricht gesendet haben, wurde sie NICHT empfangen: bitte versuchen Sie es in einigen Minuten erneut.\n",
        )
    };
    let resp = Response::text(status, text.to_string());
    if saved {
        resp
    } else {
        resp.header("Retry-After", "60")
    }
}
