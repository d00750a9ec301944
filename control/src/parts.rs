//! A large commit on the wire in parts of bounded size.
//!
//! A stream's encoder keeps a buffer as large as the largest message it has
//! sent: with a whole view of thousands of entries in one message, every
//! stream would hold hundreds of KiB for good. Split into parts of about
//! [`PART_BYTES`], the sidecar applies each in order and publishes at the
//! last (`more` is set on all the others). Parts keep the message's apply
//! order: namespaces, pods, policies, removals, egress entries, ingress
//! entries, Services, EndpointSlices; a pod's entry never comes before the
//! pod.
//!
//! Pure: no I/O.

use picket_api::v1;
use prost::Message as _;

/// The size a part aims at (encoded); one item larger than that is a part
/// of its own.
pub const PART_BYTES: usize = 16 * 1024;

/// `msg` as parts of about `limit` bytes each: the first keeps `full` (and
/// the view format), the
/// last the answers to `Resolve`, every one the generation and `me`; all
/// but the last have `more`. A message within the limit is one part.
pub fn into_parts(msg: v1::WatchResponse, limit: usize) -> Vec<v1::WatchResponse> {
    if msg.encoded_len() <= limit {
        return vec![msg];
    }
    let v1::WatchResponse {
        generation,
        full,
        me,
        namespaces,
        pods,
        policies,
        removed,
        resolved,
        egress,
        more: _,
        view_format,
        ingress,
        services,
        endpoint_slices,
        outbound,
        cluster_wide,
        cluster_policies,
        nodes,
    } = msg;
    let mut parts = Parts {
        limit,
        head: v1::WatchResponse {
            generation,
            me,
            ..Default::default()
        },
        done: Vec::new(),
        current: None,
        size: 0,
    };
    for ns in namespaces {
        let size = ns.encoded_len();
        parts.part(size).namespaces.push(ns);
    }
    for pod in pods {
        let size = pod.encoded_len();
        parts.part(size).pods.push(pod);
    }
    for policy in policies {
        let size = policy.encoded_len();
        parts.part(size).policies.push(policy);
    }
    for object in removed {
        let size = object.encoded_len();
        parts.part(size).removed.push(object);
    }
    for entry in egress {
        let size = entry.encoded_len();
        parts.part(size).egress.push(entry);
    }
    for entry in ingress {
        let size = entry.encoded_len();
        parts.part(size).ingress.push(entry);
    }
    for policy in cluster_policies {
        let size = policy.encoded_len();
        parts.part(size).cluster_policies.push(policy);
    }
    for node in nodes {
        let size = node.encoded_len();
        parts.part(size).nodes.push(node);
    }
    for service in services {
        let size = service.encoded_len();
        parts.part(size).services.push(service);
    }
    for slice in endpoint_slices {
        let size = slice.encoded_len();
        parts.part(size).endpoint_slices.push(slice);
    }
    let mut done = parts.finish();
    if let Some(first) = done.first_mut() {
        first.full = full;
        first.view_format = view_format;
        first.outbound = outbound;
        first.cluster_wide = cluster_wide;
    }
    if let Some(last) = done.last_mut() {
        last.resolved = resolved;
        last.more = false;
    }
    done
}

/// Parts being filled.
struct Parts {
    limit: usize,
    head: v1::WatchResponse,
    done: Vec<v1::WatchResponse>,
    current: Option<v1::WatchResponse>,
    size: usize,
}

impl Parts {
    /// The part an item of `size` bytes goes into.
    fn part(&mut self, size: usize) -> &mut v1::WatchResponse {
        // Each repeated item costs its length and a tag and length prefix.
        let size = size + 6;
        if self.current.is_some() && self.size + size > self.limit {
            self.done.extend(self.current.take());
        }
        if self.current.is_none() {
            self.size = self.head.encoded_len();
        }
        self.size += size;
        self.current.get_or_insert_with(|| v1::WatchResponse {
            more: true,
            ..self.head.clone()
        })
    }

    fn finish(mut self) -> Vec<v1::WatchResponse> {
        self.done.extend(self.current.take());
        if self.done.is_empty() {
            self.done.push(self.head);
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(i: usize) -> v1::Pod {
        v1::Pod {
            namespace: "shop".into(),
            name: format!("web-{i}"),
            ips: vec![vec![10, 0, (i / 256) as u8, (i % 256) as u8]],
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        }
    }

    fn address(i: usize) -> v1::SourceEgress {
        v1::SourceEgress {
            pod: None,
            addresses: vec![vec![10, 1, (i / 256) as u8, (i % 256) as u8]],
            claimants: vec![v1::EgressToward {
                policies: 1,
                ..Default::default()
            }],
        }
    }

    fn big() -> v1::WatchResponse {
        v1::WatchResponse {
            generation: 7,
            full: true,
            me: Some(v1::PodRef {
                namespace: "shop".into(),
                name: "db-0".into(),
                uid: "u".into(),
            }),
            namespaces: vec![v1::Namespace {
                name: "shop".into(),
                ..Default::default()
            }],
            pods: (0..500).map(pod).collect(),
            removed: vec![v1::ObjectRef {
                kind: v1::Kind::Pod as i32,
                namespace: "shop".into(),
                name: "gone".into(),
            }],
            egress: (0..3000).map(address).collect(),
            resolved: vec![v1::Resolved {
                ip: vec![10, 9, 9, 9],
                pod: true,
                meshed: None,
            }],
            view_format: picket_api::VIEW_FORMAT,
            ..Default::default()
        }
    }

    #[test]
    fn a_large_commit_is_sent_in_bounded_parts_that_add_up_to_it_in_order() {
        let whole = big();
        let parts = into_parts(whole.clone(), PART_BYTES);
        assert!(parts.len() > 3, "{} parts", parts.len());
        for (i, part) in parts.iter().enumerate() {
            assert!(
                part.encoded_len() <= PART_BYTES,
                "part {i}: {} bytes",
                part.encoded_len()
            );
            assert_eq!(part.generation, 7);
            assert_eq!(part.me, whole.me);
            assert_eq!(part.full, i == 0, "part {i}");
            assert_eq!(part.view_format != 0, i == 0, "part {i}");
            assert_eq!(part.more, i + 1 < parts.len(), "part {i}");
            assert_eq!(part.resolved.is_empty(), i + 1 < parts.len(), "part {i}");
        }
        // Concatenated in order, the parts are the message.
        let mut joined = v1::WatchResponse {
            generation: 7,
            full: true,
            view_format: picket_api::VIEW_FORMAT,
            me: whole.me.clone(),
            ..Default::default()
        };
        for part in parts {
            joined.namespaces.extend(part.namespaces);
            joined.pods.extend(part.pods);
            joined.policies.extend(part.policies);
            joined.removed.extend(part.removed);
            joined.egress.extend(part.egress);
            joined.resolved.extend(part.resolved);
        }
        assert_eq!(joined, whole);
    }

    #[test]
    fn a_small_commit_is_one_part() {
        let mut msg = big();
        msg.pods.truncate(3);
        msg.egress.truncate(3);
        let parts = into_parts(msg.clone(), PART_BYTES);
        assert_eq!(parts, vec![msg]);
    }

    #[test]
    fn an_item_larger_than_the_limit_is_a_part_of_its_own() {
        let mut msg = big();
        msg.egress.clear();
        msg.pods.truncate(4);
        let parts = into_parts(msg, 10);
        assert_eq!(parts.len(), 1 + 4 + 1, "a namespace, four pods, a removal");
        assert!(parts.iter().all(|p| p.pods.len() <= 1));
    }
}
