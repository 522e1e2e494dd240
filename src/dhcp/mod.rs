//! DHCPv4: a pure decision core (`classify`, `pool`, `core`) and a thin socket layer (`io`).

pub mod classify;
pub mod core;
pub mod io;
pub mod pool;
