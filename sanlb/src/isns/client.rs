//! An iSNSP client over TCP: one request at a time, transaction ids checked,
//! the connection dropped on any error and made again at the next call.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::codec::{
    CodecError, DEFAULT_PORT, Function, HEADER_LEN, Header, Request, Response, Status,
    decode_response,
};

/// Where and how to reach the iSNS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// `HOST[:PORT]`; the port defaults to 3205.
    pub server: String,
    /// The iSCSI name sanlb speaks as (the Source attribute of every request).
    pub source: String,
    /// Limit on making the TCP connection.
    pub connect_timeout: Duration,
    /// Limit on one request and its reply.
    pub call_timeout: Duration,
}

impl ClientConfig {
    /// Defaults: 3 s to connect, 5 s per call.
    pub fn new(server: impl Into<String>, source: impl Into<String>) -> Self {
        ClientConfig {
            server: server.into(),
            source: source.into(),
            connect_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(5),
        }
    }

    /// `server` with the default port added when it has none.
    pub fn server_addr(&self) -> String {
        with_default_port(&self.server)
    }
}

/// `host` → `host:3205`, `[v6]` → `[v6]:3205`, a bare IPv6 literal gets its
/// brackets; anything with a port is kept.
fn with_default_port(s: &str) -> String {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return s.to_string();
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{s}]:{DEFAULT_PORT}");
    }
    if (s.starts_with('[') && s.ends_with(']')) || !s.contains(':') {
        return format!("{s}:{DEFAULT_PORT}");
    }
    s.to_string()
}

/// Errors of a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("connecting to iSNS server {server}: {source}")]
    Connect {
        /// Server address.
        server: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No connection within the connect timeout.
    #[error("connecting to iSNS server {server}: no answer within {timeout:?}")]
    ConnectTimeout {
        /// Server address.
        server: String,
        /// The limit.
        timeout: Duration,
    },
    /// Sending or receiving failed.
    #[error("{function} to iSNS server {server}: {source}")]
    Io {
        /// Request.
        function: Function,
        /// Server address.
        server: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No reply within the call timeout.
    #[error("{function} to iSNS server {server}: no reply within {timeout:?}")]
    Timeout {
        /// Request.
        function: Function,
        /// Server address.
        server: String,
        /// The limit.
        timeout: Duration,
    },
    /// The request could not be encoded, or the reply not decoded.
    #[error("{function} to iSNS server {server}: {source}")]
    Codec {
        /// Request.
        function: Function,
        /// Server address.
        server: String,
        /// Cause.
        #[source]
        source: CodecError,
    },
    /// The reply is for another function or transaction.
    #[error(
        "{function} (xid {xid}) to iSNS server {server}: the reply is function {got_function:#06x} xid {got_xid}"
    )]
    Mismatch {
        /// Request.
        function: Function,
        /// Server address.
        server: String,
        /// Transaction id sent.
        xid: u16,
        /// Function id received.
        got_function: u16,
        /// Transaction id received.
        got_xid: u16,
    },
    /// The server refused the request.
    #[error("iSNS server {server} answered {function} with status {status}{context}")]
    Status {
        /// Request.
        function: Function,
        /// Server address.
        server: String,
        /// The status.
        status: Status,
        /// What the request was about.
        context: String,
    },
}

/// The client. Not `Clone`: one connection, one request in flight.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    conn: Option<TcpStream>,
    next_xid: u16,
}

impl Client {
    /// A client; it connects at the first call.
    pub fn new(config: ClientConfig) -> Self {
        Client {
            config,
            conn: None,
            next_xid: 1,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Close the connection (the next call makes a new one).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Send `req` and return the reply, whatever its status. Any failure
    /// closes the connection, so the next call starts on a fresh one; an I/O
    /// failure on a connection kept from an earlier call is retried once on a
    /// fresh one.
    pub async fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let reused = self.conn.is_some();
        let mut result = self.call_inner(req).await;
        if result.is_err() {
            self.conn = None;
        }
        // A connection kept from an earlier call may have been closed by a
        // server that restarted since: one more try on a fresh connection.
        // (Requests are repeatable: the reconciler reads back what it did.)
        if reused && matches!(result, Err(ClientError::Io { .. })) {
            result = self.call_inner(req).await;
            if result.is_err() {
                self.conn = None;
            }
        }
        result
    }

    /// [`Client::call`], with any status but success an error; `context`
    /// names what the request was about in that error.
    pub async fn call_ok(&mut self, req: &Request, context: &str) -> Result<Response, ClientError> {
        let resp = self.call(req).await?;
        if resp.status != Status::SUCCESS {
            return Err(self.status_error(req.function, resp.status, context));
        }
        Ok(resp)
    }

    pub(crate) fn status_error(
        &self,
        function: Function,
        status: Status,
        context: &str,
    ) -> ClientError {
        ClientError::Status {
            function,
            server: self.config.server_addr(),
            status,
            context: if context.is_empty() {
                String::new()
            } else {
                format!(" ({context})")
            },
        }
    }

    async fn call_inner(&mut self, req: &Request) -> Result<Response, ClientError> {
        let server = self.config.server_addr();
        let function = req.function;
        let xid = self.next_xid;
        self.next_xid = self.next_xid.checked_add(1).unwrap_or(1);
        let pdu = req.encode(xid).map_err(|source| ClientError::Codec {
            function,
            server: server.clone(),
            source,
        })?;
        if self.conn.is_none() {
            let timeout = self.config.connect_timeout;
            let stream = tokio::time::timeout(timeout, TcpStream::connect(&server))
                .await
                .map_err(|_| ClientError::ConnectTimeout {
                    server: server.clone(),
                    timeout,
                })?
                .map_err(|source| ClientError::Connect {
                    server: server.clone(),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            self.conn = Some(stream);
        }
        let stream = self.conn.as_mut().expect("connected above");
        let timeout = self.config.call_timeout;
        let exchange = async {
            stream.write_all(&pdu).await?;
            let mut head = [0u8; HEADER_LEN];
            stream.read_exact(&mut head).await?;
            // The length field is checked by decoding; read what it claims
            // (at most 64 KiB) so the payload is framed even when the header
            // is refused.
            let len = u16::from_be_bytes([head[4], head[5]]) as usize;
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await?;
            Ok::<_, std::io::Error>((head, payload))
        };
        let (head, payload) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                function,
                server: server.clone(),
                timeout,
            })?
            .map_err(|source| ClientError::Io {
                function,
                server: server.clone(),
                source,
            })?;
        let codec = |source| ClientError::Codec {
            function,
            server: server.clone(),
            source,
        };
        let header = Header::decode_reply(&head).map_err(codec)?;
        if header.function != function.response_id() || header.xid != xid {
            return Err(ClientError::Mismatch {
                function,
                server,
                xid,
                got_function: header.function,
                got_xid: header.xid,
            });
        }
        decode_response(&header, &payload).map_err(codec)
    }
}

#[cfg(test)]
mod tests {
    use super::with_default_port;

    #[test]
    fn default_port() {
        assert_eq!(with_default_port("isns.example"), "isns.example:3205");
        assert_eq!(with_default_port("isns.example:5000"), "isns.example:5000");
        assert_eq!(with_default_port("127.0.0.1"), "127.0.0.1:3205");
        assert_eq!(with_default_port("127.0.0.1:1"), "127.0.0.1:1");
        assert_eq!(with_default_port("::1"), "[::1]:3205");
        assert_eq!(with_default_port("[::1]"), "[::1]:3205");
        assert_eq!(with_default_port("[::1]:7"), "[::1]:7");
    }
}
