//! Test support shared by Picket's crates (work in progress).
