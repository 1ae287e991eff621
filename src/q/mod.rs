//! The q layer (STUB): K ⇄ Rust translation behind `.mqtt.*`.
