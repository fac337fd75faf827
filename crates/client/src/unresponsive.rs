//! Hosts that lately did not answer at all (the connect timeout ran out: a frozen machine, a
//! firewall dropping packets — common in the middle of a failover), remembered for the process
//! so that the next connection through the same host list tries the others first instead of
//! waiting the whole timeout on the same host again. A host that answers is forgotten.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::params::Endpoint;

/// How long a host that did not answer goes last in its host list.
pub(crate) const GOES_LAST_FOR: Duration = Duration::from_secs(300);

fn table() -> &'static Mutex<HashMap<String, Instant>> {
    static TABLE: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

pub(crate) fn note_silent(endpoint: &Endpoint) {
    if let Ok(mut t) = table().lock() {
        t.insert(endpoint.to_string(), Instant::now());
    }
}

pub(crate) fn note_answered(endpoint: &Endpoint) {
    if let Ok(mut t) = table().lock() {
        t.remove(&endpoint.to_string());
    }
}

/// `endpoints` in the order to try them: the given order, with the hosts that did not answer
/// within [`GOES_LAST_FOR`] moved to the end (in their own order).
pub(crate) fn in_trying_order(endpoints: &[Endpoint]) -> Vec<&Endpoint> {
    let silent = |e: &Endpoint| {
        table().lock().ok().is_some_and(|t| {
            t.get(&e.to_string())
                .is_some_and(|since| since.elapsed() < GOES_LAST_FOR)
        })
    };
    let (mut answering, quiet): (Vec<&Endpoint>, Vec<&Endpoint>) =
        endpoints.iter().partition(|e| !silent(e));
    answering.extend(quiet);
    answering
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: "192.0.2.7".into(),
            addr: None,
            port,
        }
    }

    #[test]
    fn a_host_that_did_not_answer_goes_last_until_it_answers() {
        let list = [tcp(61001), tcp(61002), tcp(61003)];
        let ports =
            |v: Vec<&Endpoint>| -> Vec<String> { v.iter().map(|e| e.to_string()).collect() };
        let before = ports(in_trying_order(&list));
        note_silent(&list[0]);
        let after = ports(in_trying_order(&list));
        assert_eq!(
            after,
            [before[1].clone(), before[2].clone(), before[0].clone()]
        );
        note_answered(&list[0]);
        assert_eq!(ports(in_trying_order(&list)), before);
    }
}
