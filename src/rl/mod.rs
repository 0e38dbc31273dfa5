//! The RL loop of issue 5 (DESIGN sections 5, 6, 9): text codecs, group sampling,
//! the loop with its run directory, checkpoints, evaluation, the reward chart.

pub mod checkpoint;
pub mod codec;
pub mod episodes;
pub mod eval;
pub mod plot;
pub mod run;
pub mod sample;
pub mod settings;
pub mod work;

pub use codec::{CharCodec, ChatCodec, TextCodec};
pub use run::{run_rl, RunSummary};
pub use settings::RunSettings;
