use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = leasekeeper::cli::Cli::parse();
    if let Err(e) = leasekeeper::cli::run(cli).await {
        match e.downcast_ref::<tonic::Status>() {
            Some(s) => eprintln!("error: {:?}: {}", s.code(), s.message()),
            None => eprintln!("error: {e}"),
        }
        std::process::exit(1);
    }
}
