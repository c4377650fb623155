use clap::Parser;

fn main() {
    let cli = leasekeeper::cli::Cli::parse();
    let rt = match cli.runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(leasekeeper::cli::run(cli)) {
        match e.downcast_ref::<tonic::Status>() {
            Some(s) => eprintln!("error: {:?}: {}", s.code(), s.message()),
            None => eprintln!("error: {e}"),
        }
        std::process::exit(1);
    }
}
