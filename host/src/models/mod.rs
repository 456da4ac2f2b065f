//! Model definitions, one file per model family, with Hugging Face configuration fields
//! and parameter names so that checkpoints move between this trainer and `transformers`.

pub mod bert;
pub mod checkpoint;
pub mod clip;
pub mod groups;
pub mod open_clip;
pub mod owlvit;
pub mod pretrained;
pub mod pth;
pub mod ram_caption;
pub mod ram_plus;
pub mod relative_position;
pub mod swin;
pub mod tagger;
pub mod text_generation;
