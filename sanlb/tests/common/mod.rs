//! Helpers of the privileged enforcement tests: a lab of network namespaces,
//! runtimes whose threads live in one namespace, a packet capture with
//! ARP/NA parsers, and probes (addresses, neighbours, a TCP name service).

pub mod capture;
pub mod lab;
pub mod ns_runtime;
pub mod probe;
