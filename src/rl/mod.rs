//! The RL loop of issue 5 (DESIGN sections 5, 6, 9): text codecs, group sampling,
//! the loop with its run directory, checkpoints, evaluation, the reward chart.

pub mod episodes;
pub mod eval;
pub mod run;
pub mod sample;
pub mod settings;
pub mod work;

pub use crate::codec::{self, CharCodec, ChatCodec, TextCodec};
pub use crate::plot;
pub use crate::train::checkpoint;
pub use run::{run_rl, RunSummary};
pub use settings::RunSettings;
