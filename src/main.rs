/// mimalloc instead of glibc malloc: allocation was ~15 % of the gateway's CPU per message,
/// with contention between the API, writer and bind threads (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    smsgate::cli::main()
}
