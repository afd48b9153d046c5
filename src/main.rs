use std::process::ExitCode;

/// Keeps a training process's big freed buffers for its next step (see `heap`).
#[global_allocator]
static ALLOCATOR: mananera::heap::StepAllocator = mananera::heap::StepAllocator;

fn main() -> ExitCode {
    mananera::cli::main()
}
