fn main() -> std::process::ExitCode {
    intellia_token_broker::cli::main()
}
