#[global_allocator]
static ALLOCATOR: intellia_token_broker::allocator::Allocator =
    intellia_token_broker::allocator::Allocator;

fn main() -> std::process::ExitCode {
    intellia_token_broker::cli::main()
}
