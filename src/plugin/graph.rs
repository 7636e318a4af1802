//! Init order from the requirement graph: a plugin that requires type `T` comes after every
//! plugin of type `T`. Ties keep registration order, so the order is deterministic.

use super::types::PluginType;

/// Returns the init order as indexes into `nodes`, or the indexes of the plugins on a cycle.
pub(super) fn order(nodes: &[(PluginType, Vec<PluginType>)]) -> Result<Vec<usize>, Vec<usize>> {
    let n = nodes.len();
    // edges[a] = plugins that must wait for a
    let mut edges = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for (i, (_, requires)) in nodes.iter().enumerate() {
        for (j, (ty, _)) in nodes.iter().enumerate() {
            if i != j && requires.contains(ty) {
                edges[j].push(i);
                indegree[i] += 1;
            }
        }
    }
    let mut done = vec![false; n];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let Some(next) = (0..n).find(|&i| !done[i] && indegree[i] == 0) else {
            return Err(cycle(nodes, &done));
        };
        done[next] = true;
        out.push(next);
        for &k in &edges[next] {
            indegree[k] -= 1;
        }
    }
    Ok(out)
}

/// Finds one cycle among the nodes not yet ordered, by walking requirements until a node
/// repeats.
fn cycle(nodes: &[(PluginType, Vec<PluginType>)], done: &[bool]) -> Vec<usize> {
    let pending: Vec<usize> = (0..nodes.len()).filter(|&i| !done[i]).collect();
    let mut path: Vec<usize> = Vec::new();
    let mut cur = pending[0];
    loop {
        if let Some(pos) = path.iter().position(|&p| p == cur) {
            return path[pos..].to_vec();
        }
        path.push(cur);
        let next = pending
            .iter()
            .copied()
            .find(|&j| j != cur && nodes[cur].1.contains(&nodes[j].0));
        match next {
            Some(j) => cur = j,
            None => return pending,
        }
    }
}
