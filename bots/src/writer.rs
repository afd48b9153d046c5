//! Shows a speech as it is written, the way both platforms need it: edits paced to at most
//! one per interval, a platform's `retry after` honoured, text past a message's size
//! continued in new messages, never cut, and every call under a deadline: an edit that gets
//! no answer is sent again later (the same edit twice changes nothing), a new message that
//! gets no answer is never sent again (it may have been posted: a second one could show the
//! text twice), so the reply ends there.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, sleep_until};

use crate::port::{Piece, Reply};
use mananera_health::Incident;

/// Why a message could not be shown.
#[derive(Debug)]
pub enum Delivery {
    /// The platform asked us to wait this long.
    RetryAfter(Duration),
    /// Anything else; the text is for the logs.
    Failed(String),
}

/// How long one call to the platform may take before it counts as unanswered.
pub const CALL_WITHIN: Duration = Duration::from_secs(15);

/// Where a speech is shown: a list of messages, the first of which may already exist.
pub trait Surface: Send {
    /// The most characters (Unicode scalar values) one message may hold.
    const LIMIT: usize;

    /// Makes message `index` show `text`: edits it, or, when `index` is one past the last
    /// message, creates it.
    fn show(
        &mut self,
        index: usize,
        text: &str,
    ) -> impl Future<Output = Result<(), Delivery>> + Send;

    /// The platform's incident: failed calls are logged once while it keeps failing.
    fn incident() -> &'static Incident;

    /// Waits until the platform may be written to (a per-chat pace); not under the call's
    /// deadline.
    fn turn(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Shown while the speech is still being written.
const WRITING: &str = " …";
/// Shown when the model produced no words at all.
const EMPTY: &str = "(el modelo no escribió nada; prueba con otro tema)";
/// Failed attempts at showing the final text before giving up.
const FINAL_ATTEMPTS: u32 = 5;
/// How long, in all, the final text waits on a platform's "retry after" before giving up.
/// A rate limit is the platform asking for patience, not a failure: it does not count
/// against [`FINAL_ATTEMPTS`].
const FINAL_PATIENCE: Duration = Duration::from_secs(600);

/// Splits `text` into messages of at most `limit` characters, breaking at the last
/// newline or space of a full message when there is one.
pub fn pages(text: &str, limit: usize) -> Vec<String> {
    let mut pages = Vec::new();
    let mut rest = text;
    while rest.chars().count() > limit {
        let hard = rest
            .char_indices()
            .nth(limit)
            .map_or(rest.len(), |(i, _)| i);
        let window = &rest[..hard];
        let cut = window
            .rfind('\n')
            .or_else(|| window.rfind(' '))
            .filter(|&i| i > 0)
            .unwrap_or(hard);
        pages.push(window[..cut].to_string());
        rest = rest[cut..].trim_start_matches([' ', '\n']);
    }
    if !rest.is_empty() || pages.is_empty() {
        pages.push(rest.to_string());
    }
    pages
}

/// What a [`write`] ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The whole speech is shown.
    Shown,
    /// The speech failed; what was written and the reason are shown.
    Failed,
    /// The platform kept refusing, or a new message got no answer; the logs say why.
    Undelivered,
}

/// What one attempt at showing a change came to.
enum Step {
    /// Shown (or nothing left to show); the next change may come at this instant.
    Shown(Instant),
    /// Not shown: the call failed; try again at this instant.
    Retry(Instant),
    /// Not shown: the platform asked to wait this long, until this instant.
    Wait(Duration, Instant),
    /// A new message got no answer: nothing more may be sent for this reply.
    Stop,
}

/// Streams `reply` onto `surface`, showing at most one change per `interval`.
pub async fn write<S: Surface>(surface: &mut S, reply: Reply, interval: Duration) -> Outcome {
    let mut shown: Vec<String> = Vec::new();
    let mut next = Instant::now();
    let (text, failure) = match reply {
        Reply::Whole(text) => (text, None),
        Reply::Stream(mut pieces) => {
            let mut text = String::new();
            let failure = loop {
                let dirty = !text.is_empty() && rendered(&text, true, S::LIMIT) != shown;
                let piece = tokio::select! {
                    piece = pieces.next() => piece,
                    () = sleep_until(next), if dirty => {
                        let target = rendered(&text, true, S::LIMIT);
                        next = match show_one(surface, &mut shown, &target, interval).await {
                            Step::Shown(at) | Step::Retry(at) | Step::Wait(_, at) => at,
                            Step::Stop => return Outcome::Undelivered,
                        };
                        continue;
                    }
                };
                match piece {
                    Some(Piece::Text(delta)) => text.push_str(&delta),
                    Some(Piece::Done) => break None,
                    Some(Piece::Failed(reason)) => break Some(reason),
                    None => break Some("la generación se interrumpió".to_string()),
                }
            };
            (text, failure)
        }
    };
    let mut full = if text.trim().is_empty() && failure.is_none() {
        EMPTY.to_string()
    } else {
        text.trim_end().to_string()
    };
    if let Some(reason) = &failure {
        full.push_str(&format!("\n\n⚠️ {reason}"));
    }
    let target = rendered(&full, false, S::LIMIT);
    let (mut failures, mut waited) = (0, Duration::ZERO);
    while shown != target {
        sleep_until(next).await;
        next = match show_one(surface, &mut shown, &target, interval).await {
            Step::Shown(at) => at,
            Step::Retry(at) => {
                failures += 1;
                if failures >= FINAL_ATTEMPTS {
                    return Outcome::Undelivered;
                }
                at
            }
            Step::Wait(wait, at) => {
                waited += wait;
                if waited > FINAL_PATIENCE {
                    return Outcome::Undelivered;
                }
                at
            }
            Step::Stop => return Outcome::Undelivered,
        };
    }
    if failure.is_some() {
        Outcome::Failed
    } else {
        Outcome::Shown
    }
}

/// The messages that should show `text`; a speech still being written gets a marker.
fn rendered(text: &str, writing: bool, limit: usize) -> Vec<String> {
    let mut pages = pages(text, limit);
    if writing {
        let last = pages.last_mut().expect("pages is never empty");
        if last.chars().count() + WRITING.chars().count() <= limit {
            last.push_str(WRITING);
        }
    }
    pages
}

/// Makes the first message that differs from `target` show its target text, under
/// [`CALL_WITHIN`].
async fn show_one<S: Surface>(
    surface: &mut S,
    shown: &mut Vec<String>,
    target: &[String],
    interval: Duration,
) -> Step {
    let Some(index) = (0..target.len()).find(|&i| shown.get(i) != Some(&target[i])) else {
        return Step::Shown(Instant::now());
    };
    surface.turn().await;
    let shown_in_time =
        tokio::time::timeout(CALL_WITHIN, surface.show(index, &target[index])).await;
    match shown_in_time {
        Ok(Ok(())) => {
            S::incident().resolved();
            if index == shown.len() {
                shown.push(target[index].clone());
            } else {
                shown[index] = target[index].clone();
            }
            Step::Shown(Instant::now() + interval)
        }
        Ok(Err(Delivery::RetryAfter(wait))) => {
            let ms = wait.as_millis();
            S::incident().failed(&format!("asked to slow down for {ms} ms"));
            Step::Wait(wait, Instant::now() + wait.max(interval))
        }
        Ok(Err(Delivery::Failed(reason))) => {
            S::incident().failed(&format!("a message could not be shown: {reason}"));
            Step::Retry(Instant::now() + interval * 2)
        }
        Err(_) if index == shown.len() => {
            tracing::warn!(
                message = index,
                within_s = CALL_WITHIN.as_secs(),
                "a new message got no answer in time; it may have been posted, so it is not sent again and this reply ends here"
            );
            Step::Stop
        }
        Err(_) => {
            S::incident().failed(&format!(
                "an edit got no answer within {} s; trying again",
                CALL_WITHIN.as_secs()
            ));
            Step::Retry(Instant::now() + interval)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn pages_never_cut_and_break_at_spaces() {
        let text = "uno dos tres cuatro cinco";
        let split = pages(text, 10);
        assert_eq!(split, ["uno dos", "tres", "cuatro", "cinco"]);
        assert!(split.iter().all(|p| p.chars().count() <= 10));
        let long = "ñ".repeat(25);
        let split = pages(&long, 10);
        assert_eq!(split.concat(), long);
        assert_eq!(split.len(), 3);
        assert_eq!(pages("", 10), [""]);
    }

    /// Records every call; fails the calls whose number is in `refuse`, and never answers
    /// those in `hang`.
    struct Recorder {
        calls: Arc<Mutex<Vec<(Instant, usize, String)>>>,
        refuse: Vec<usize>,
        hang: Vec<usize>,
    }

    static RECORDER: Incident = Incident::new("test_recorder", "the test recorder");

    impl Surface for Recorder {
        const LIMIT: usize = 20;
        fn incident() -> &'static Incident {
            &RECORDER
        }
        async fn show(&mut self, index: usize, text: &str) -> Result<(), Delivery> {
            let number = {
                let mut calls = self.calls.lock().unwrap();
                calls.push((Instant::now(), index, text.to_string()));
                calls.len() - 1
            };
            if self.hang.contains(&number) {
                std::future::pending::<()>().await;
            }
            if self.refuse.contains(&number) {
                return Err(Delivery::RetryAfter(Duration::from_secs(3)));
            }
            Ok(())
        }
    }

    /// The messages as the calls left them.
    fn messages(calls: &[(Instant, usize, String)]) -> Vec<String> {
        let mut shown: Vec<String> = Vec::new();
        for (_, index, text) in calls {
            if *index == shown.len() {
                shown.push(text.clone());
            } else {
                shown[*index] = text.clone();
            }
        }
        shown
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_on_the_final_text_are_waited_out_not_counted_as_failures() {
        let calls = Arc::default();
        // Every call after the first is refused (retry after 3 s), more times than the
        // failures the final text may have.
        let mut surface = Recorder {
            calls: Arc::clone(&calls),
            refuse: (1..=FINAL_ATTEMPTS as usize + 3).collect(),
            hang: vec![],
        };
        let outcome = write(&mut surface, stream(3), Duration::from_secs(1)).await;
        assert_eq!(outcome, Outcome::Shown);
        let calls = calls.lock().unwrap();
        assert_eq!(messages(&calls).join(" "), "palabra0 palabra1 palabra2");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_edit_is_sent_again_and_the_end_is_whole() {
        let calls = Arc::default();
        let mut surface = Recorder {
            calls: Arc::clone(&calls),
            refuse: vec![],
            hang: vec![1],
        };
        let outcome = write(&mut surface, stream(3), Duration::from_secs(1)).await;
        assert_eq!(outcome, Outcome::Shown);
        let calls = calls.lock().unwrap();
        assert_eq!(calls[1].1, 0, "the second call was an edit");
        assert!(calls[2].0 - calls[1].0 >= CALL_WITHIN);
        assert_eq!(messages(&calls).join(" "), "palabra0 palabra1 palabra2");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_new_message_is_never_sent_twice() {
        let calls = Arc::default();
        // 30 words of 9 characters: two or more messages of 20; the first follow-up hangs.
        let mut surface = Recorder {
            calls: Arc::clone(&calls),
            refuse: vec![],
            hang: vec![],
        };
        let outcome = write(&mut surface, stream(30), Duration::from_secs(1)).await;
        assert_eq!(outcome, Outcome::Shown);
        let first_create = calls
            .lock()
            .unwrap()
            .iter()
            .position(|(_, index, _)| *index == 1)
            .unwrap();
        let calls = Arc::default();
        let mut surface = Recorder {
            calls: Arc::clone(&calls),
            refuse: vec![],
            hang: vec![first_create],
        };
        let outcome = write(&mut surface, stream(30), Duration::from_secs(1)).await;
        assert_eq!(outcome, Outcome::Undelivered);
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), first_create + 1, "nothing was sent after it");
        assert_eq!(
            calls.iter().filter(|(_, index, _)| *index == 1).count(),
            1,
            "the new message was sent once"
        );
        assert_eq!(messages(&calls).len(), 2);
    }

    fn stream(words: usize) -> Reply {
        let pieces = (0..words)
            .map(|i| Piece::Text(format!("palabra{i} ")))
            .chain([Piece::Done]);
        let stream = futures_util::stream::iter(pieces).then(|piece| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            piece
        });
        Reply::Stream(stream.boxed())
    }

    #[tokio::test(start_paused = true)]
    async fn edits_are_paced_retry_after_is_honoured_and_the_end_is_whole() {
        let calls = Arc::default();
        let mut surface = Recorder {
            calls: Arc::clone(&calls),
            refuse: vec![1],
            hang: vec![],
        };
        let outcome = write(&mut surface, stream(30), Duration::from_secs(1)).await;
        assert_eq!(outcome, Outcome::Shown);
        let calls = calls.lock().unwrap();
        for pair in calls.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(gap >= Duration::from_secs(1), "edits {gap:?} apart");
        }
        assert!(calls[2].0 - calls[1].0 >= Duration::from_secs(3));
        assert!(
            calls
                .iter()
                .all(|(_, _, text)| text.chars().count() <= Recorder::LIMIT)
        );
        let last = messages(&calls);
        let expected: String = (0..30).map(|i| format!("palabra{i} ")).collect();
        assert_eq!(last.join(" "), expected.trim_end());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_shown_after_the_text() {
        let pieces = futures_util::stream::iter([
            Piece::Text("hola".into()),
            Piece::Failed("sin memoria".into()),
        ]);
        let calls = Arc::default();
        let mut surface = Recorder {
            calls: Arc::clone(&calls),
            refuse: vec![],
            hang: vec![],
        };
        let outcome = write(
            &mut surface,
            Reply::Stream(pieces.boxed()),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(outcome, Outcome::Failed);
        let calls = calls.lock().unwrap();
        let last = &calls.last().unwrap().2;
        assert!(last.starts_with("hola"), "{last}");
    }
}
