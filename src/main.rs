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
            Some(s) => {
                eprintln!("error: {:?}: {}", s.code(), s.message());
                // A failed TLS handshake reaches a client as a bare transport error.
                if s.message().contains("transport error") {
                    eprintln!("hint: the nodes may be unreachable, or their TLS refused this client: with TLS, --cacert must hold the CA that signed the nodes' certificates, and a port with client-cert-auth needs --cert and --key; a TLS port refuses plaintext (no --cacert)");
                }
            }
            None => eprintln!("error: {e}"),
        }
        std::process::exit(1);
    }
}
