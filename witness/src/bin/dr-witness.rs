fn main() {
    eprintln!("dr-witness: the witness service is not built yet (see the failover issue)");
    std::process::exit(70);
}
