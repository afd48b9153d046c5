use std::process::ExitCode;

fn main() -> ExitCode {
    mananera::cli::main()
}
