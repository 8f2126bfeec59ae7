fn main() -> std::process::ExitCode {
    smsgate::cli::main()
}
