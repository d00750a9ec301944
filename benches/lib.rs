//! Support shared by the benches in `benches/`.

pub mod procfs;
