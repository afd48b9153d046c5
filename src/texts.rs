//! Every text the daemon shows a person about a request — a bad topic or voice, the limits,
//! the quota, a busy server, a speech that failed — in one place: Spanish by default
//! (`serve.language`), English kept for the API's `error` field, each with a stable
//! machine-readable code beside it (the API's `code`, the metrics' outcome).

use crate::language::Language;
use crate::nightly::{NotStarted, NothingRunning};
use crate::service::limits::Refusal;
use crate::service::queue::{BusyCause, Failure};
use crate::service::topic::Problem;
use crate::service::{Invalid, Rejection};

/// The stable code of a rejection.
pub fn code(rejection: &Rejection) -> &'static str {
    match rejection {
        Rejection::Invalid(Invalid::Topic(_)) => "invalid_topic",
        Rejection::Invalid(Invalid::Voice(_)) => "unknown_voice",
        Rejection::Invalid(Invalid::Settings(_)) => "invalid_settings",
        Rejection::Busy(busy) if busy.cause == BusyCause::Backend => "backend_unavailable",
        Rejection::Busy(_) => "busy",
        Rejection::Refused(Refusal::NotAllowed) => "not_allowed",
        Rejection::Refused(Refusal::InFlight) => "in_flight",
        Rejection::Refused(Refusal::RateLimited { .. }) => "rate_limited",
        Rejection::Refused(Refusal::QuotaExhausted { .. }) => "quota",
    }
}

/// What a person reads for `rejection`, in `language`.
pub fn rejection(rejection: &Rejection, language: Language) -> String {
    match language {
        Language::Es => spanish(rejection),
        Language::En => english(rejection),
    }
}

fn spanish(rejection: &Rejection) -> String {
    match rejection {
        Rejection::Invalid(Invalid::Topic(problem)) => match problem {
            Problem::Control { code, position } => format!(
                "El tema tiene un carácter de control (U+{code:04X}) en la posición {position}; quítalo."
            ),
            Problem::Empty => "El tema está vacío: escribe de qué debe tratar el discurso.".into(),
            Problem::TooLong { chars, max } => {
                format!("El tema tiene {chars} caracteres y el límite es {max}: acórtalo.")
            }
        },
        Rejection::Invalid(Invalid::Voice(unknown)) => format!(
            "No conozco la voz «{}». Las voces son: {}.",
            unknown.asked,
            unknown.known.join(", ")
        ),
        Rejection::Invalid(Invalid::Settings(detail)) => {
            format!("Los ajustes de la petición no son válidos: {detail}.")
        }
        Rejection::Busy(busy) if busy.cause == BusyCause::Backend => format!(
            "El servidor que escribe los discursos no está disponible ahora; vuelve a intentarlo en unos {} s.",
            busy.retry_after_s
        ),
        Rejection::Busy(busy) => format!(
            "El servidor está ocupado escribiendo otros discursos; vuelve a intentarlo en unos {} s.",
            busy.retry_after_s
        ),
        Rejection::Refused(Refusal::NotAllowed) => {
            "No tienes permiso para pedir discursos a este servidor.".into()
        }
        Rejection::Refused(Refusal::InFlight) => {
            "Tu discurso anterior todavía se está escribiendo; espera a que termine.".into()
        }
        Rejection::Refused(Refusal::RateLimited { retry_after_s }) => format!(
            "Demasiadas peticiones en el último minuto; vuelve a intentarlo en {retry_after_s} s."
        ),
        Rejection::Refused(Refusal::QuotaExhausted {
            resets_in_s,
            time_zone,
        }) => format!(
            "Ya usaste los discursos de hoy; la cuota se renueva a medianoche ({time_zone}), en {} h {} min.",
            resets_in_s / 3600,
            resets_in_s % 3600 / 60
        ),
    }
}

fn english(rejection: &Rejection) -> String {
    match rejection {
        Rejection::Invalid(Invalid::Topic(problem)) => match problem {
            Problem::Control { code, position } => format!(
                "the topic contains a control character (U+{code:04X}) at position {position}; remove it"
            ),
            Problem::Empty => "the topic is empty: write what the speech should be about".into(),
            Problem::TooLong { chars, max } => {
                format!("the topic is {chars} characters long; the limit is {max}: shorten it")
            }
        },
        Rejection::Invalid(Invalid::Voice(unknown)) => format!(
            "there is no voice {:?}; the voices are {}",
            unknown.asked,
            unknown.known.join(", ")
        ),
        Rejection::Invalid(Invalid::Settings(detail)) => detail.clone(),
        Rejection::Busy(busy) if busy.cause == BusyCause::Backend => format!(
            "the generation server is unavailable; try again in about {} s",
            busy.retry_after_s
        ),
        Rejection::Busy(busy) => format!(
            "the server is busy writing other speeches; try again in about {} s",
            busy.retry_after_s
        ),
        Rejection::Refused(Refusal::NotAllowed) => {
            "you are not allowed to ask this server for speeches".into()
        }
        Rejection::Refused(Refusal::InFlight) => {
            "your previous speech is still being written; wait for it to finish".into()
        }
        Rejection::Refused(Refusal::RateLimited { retry_after_s }) => {
            format!("too many requests in the last minute; try again in {retry_after_s} s")
        }
        Rejection::Refused(Refusal::QuotaExhausted {
            resets_in_s,
            time_zone,
        }) => format!(
            "you have used today's quota of speeches; it resets at midnight ({time_zone}), in {} h {} min",
            resets_in_s / 3600,
            resets_in_s % 3600 / 60
        ),
    }
}

/// The stable code of a speech that failed.
pub fn failure_code(failure: &Failure) -> &'static str {
    match failure {
        Failure::Restarting => "restarting",
        Failure::Prompt(_) => "invalid_prompt",
        Failure::Model => "model_failed",
        Failure::WorkerLost => "worker_lost",
        Failure::Backend { .. } => "backend_failed",
    }
}

/// What a person reads when a speech could not be written.
pub fn failure(failure: &Failure, language: Language) -> String {
    match (failure, language) {
        (Failure::Restarting, Language::Es) => {
            "El servidor se está reiniciando y tuvo que detener este discurso; vuelve a pedirlo en un minuto.".into()
        }
        (Failure::Restarting, Language::En) => {
            "the server is restarting and had to stop this speech; please ask again in a minute".into()
        }
        (Failure::Prompt(detail), Language::Es) => {
            format!("No se puede escribir sobre este tema: {detail}. Prueba con uno más corto.")
        }
        (Failure::Prompt(detail), Language::En) => detail.clone(),
        (Failure::Model, Language::Es) => {
            "El modelo falló al escribir este discurso; vuelve a intentarlo.".into()
        }
        (Failure::Model, Language::En) => {
            "the model failed while writing this speech; please try again".into()
        }
        (Failure::WorkerLost, Language::Es) => {
            "El servidor tuvo un problema al escribir este discurso; vuelve a pedirlo.".into()
        }
        (Failure::WorkerLost, Language::En) => {
            "the server had a problem writing this speech; please ask again".into()
        }
        (Failure::Backend { retry_after_s }, Language::Es) => format!(
            "El servidor que escribe los discursos falló o tardó demasiado; vuelve a intentarlo en unos {retry_after_s} s."
        ),
        (Failure::Backend { retry_after_s }, Language::En) => format!(
            "the generation server failed or took too long; please try again in about {retry_after_s} s"
        ),
    }
}

/// What an admin reads after asking a bot to retrain now.
pub fn retrain_started(language: Language) -> &'static str {
    match language {
        Language::Es => {
            "Reentrenamiento iniciado: descargar transcripciones, ajustar el modelo y servirlo si mejora. /estado muestra el avance."
        }
        Language::En => {
            "Retraining started: fetch transcripts, fine-tune, and serve the result if it is better. The status command shows its progress."
        }
    }
}

/// What an admin reads when a retrain could not start.
pub fn retrain_refused(refused: &NotStarted, language: Language) -> String {
    match (refused, language) {
        (NotStarted::InProgress(run), Language::Es) => format!(
            "No se pudo: ya hay un reentrenamiento en curso (empezó {} por {}, ahora: {}); espera a que termine o cancélalo.",
            run.started, run.trigger, run.phase
        ),
        (NotStarted::NotReady, Language::Es) => {
            "No se pudo: el modelo todavía se está cargando; inténtalo cuando esté listo.".into()
        }
        (NotStarted::Stopping, Language::Es) => {
            "No se pudo: el servidor se está deteniendo.".into()
        }
        (refused, Language::En) => format!("Could not: {refused}"),
    }
}

/// What an admin reads after asking to cancel the run in progress.
pub fn cancel_answer(cancelled: Result<(), NothingRunning>, language: Language) -> String {
    match (cancelled, language) {
        (Ok(()), Language::Es) => {
            "Cancelando el reentrenamiento en curso; el siguiente lo retoma.".into()
        }
        (Ok(()), Language::En) => "Cancelling the run in progress; the next one resumes it.".into(),
        (Err(_), Language::Es) => {
            "No se pudo: no hay ningún reentrenamiento en curso que cancelar.".into()
        }
        (Err(nothing), Language::En) => format!("Could not: {nothing}"),
    }
}

/// What a person reads while the model is still loading.
pub fn loading(language: Language) -> &'static str {
    match language {
        Language::Es => "El modelo todavía se está cargando; vuelve a intentarlo en unos segundos.",
        Language::En => "the model is still loading; try again in a few seconds",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voices::UnknownVoice;

    #[test]
    fn people_read_spanish_and_the_api_keeps_english_and_a_code() {
        let quota = Rejection::Refused(Refusal::QuotaExhausted {
            resets_in_s: 3 * 3600 + 20 * 60,
            time_zone: "America/Mexico_City".into(),
        });
        assert_eq!(
            rejection(&quota, Language::Es),
            "Ya usaste los discursos de hoy; la cuota se renueva a medianoche (America/Mexico_City), en 3 h 20 min."
        );
        assert!(rejection(&quota, Language::En).starts_with("you have used today's quota"));
        assert_eq!(code(&quota), "quota");
        let voice = Rejection::Invalid(Invalid::Voice(UnknownVoice {
            asked: "fox".into(),
            known: vec!["amlo".into(), "sheinbaum".into()],
        }));
        assert_eq!(
            rejection(&voice, Language::Es),
            "No conozco la voz «fox». Las voces son: amlo, sheinbaum."
        );
        assert_eq!(code(&voice), "unknown_voice");
        let long = Rejection::Invalid(Invalid::Topic(Problem::TooLong {
            chars: 5000,
            max: 200,
        }));
        assert_eq!(
            rejection(&long, Language::Es),
            "El tema tiene 5000 caracteres y el límite es 200: acórtalo."
        );
        assert_eq!(
            failure(&Failure::Restarting, Language::Es),
            "El servidor se está reiniciando y tuvo que detener este discurso; vuelve a pedirlo en un minuto."
        );
    }
}
