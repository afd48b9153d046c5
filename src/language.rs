//! The language of what people read (`serve.language`): its own module so that the settings
//! can name it without depending on the texts, which know the service and the nightly run.

use serde::{Deserialize, Serialize};

/// The language of the texts people read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Spanish: what the bots' and the page's users speak.
    #[default]
    Es,
    En,
}
