fn main() -> std::process::ExitCode {
    rkd::cli::main()
}
