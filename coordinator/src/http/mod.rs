//! The two HTTPS listeners and everything between a socket and a handler's plain function:
//! TLS ([`tls`]), the routers and thin handlers ([`routes`]), body and query extraction
//! ([`extract`]), connection and body limits ([`limits`]), the one mapping of failures to
//! status codes and JSend bodies ([`error`]), the OpenAPI document ([`openapi`]), and the
//! plain-HTTP operations listener of `/metrics` and the health probes ([`ops`]).
pub mod error;
pub mod extract;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod routes;
pub mod tls;
