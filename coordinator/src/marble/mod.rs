//! What marbles ask of the coordinator on the mesh API: activation ([`activation`]),
//! certificate renewal ([`renewal`]), and what users do to them on the client API:
//! revocation and the CRL ([`revocation`]); why a marble is refused ([`refusal`]) and the mesh
//! configuration it is given ([`mesh`]); the monotonic counters marbles keep ([`counter`]).
pub mod activation;
pub mod counter;
pub mod mesh;
pub mod refusal;
pub mod renewal;
pub mod revocation;
