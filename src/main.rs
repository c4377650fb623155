use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = leasekeeper::cli::Cli::parse();
    if let Err(e) = leasekeeper::cli::run(cli).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
