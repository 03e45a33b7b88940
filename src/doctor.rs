//! `doctor` (DESIGN §9.7).

use std::path::Path;

pub async fn run(_config: &Path, _mint_test_user: Option<&str>) -> Result<(), String> {
    Err("not yet".to_owned())
}
