//! The control plane in one test binary (one link, shared fakes): the
//! controller's state machine on an explicit clock (`moves`, and in pair
//! mode `pairs`), its HTTP API
//! through `app()` (`http`), a real controller with agents on loopback
//! (`loopback`), the agent's loop against fakes (`agent_loop`), and with
//! real addresses in network namespaces (`netns`, privileged).

mod agent_loop;
mod controls;
mod fakes;
mod hardening;
mod http;
mod loopback;
mod moves;
mod netns;
mod page;
mod pairs;
mod serving;
