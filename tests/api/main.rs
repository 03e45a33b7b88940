//! Integration tests: the real broker on a random port, over HTTP, against the Intellia
//! simulator. One test binary, so the crate is linked once.

mod attacks;
mod backend_route;
mod cache;
mod helpers;
mod limits;
mod operations;
mod process;
mod session_keys;
mod token_route;
mod upstream;
