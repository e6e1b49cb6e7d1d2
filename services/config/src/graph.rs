//! The service dependency graph of a tenant. Calls between services are asynchronous and go
//! through generated stubs; a cycle of calls (A waits on B waits on A) is refused at start-up,
//! naming the cycle, before it can deadlock or amplify load at run time.

use std::{collections::BTreeMap, fmt};

/// Which service calls which.
#[derive(Clone, Debug, Default)]
pub struct DependencyGraph {
    edges: BTreeMap<String, Vec<String>>,
}

/// A cycle of calls, e.g. `message -> gateway -> message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("dependency cycle: {}", path.join(" -> "))]
pub struct Cycle {
    /// The services of the cycle, the first repeated at the end.
    pub path: Vec<String>,
}

impl DependencyGraph {
    /// The graph of `services`, each with the services it calls.
    pub fn of<'a, D>(services: impl IntoIterator<Item = (&'a str, D)>) -> Self
    where
        D: IntoIterator<Item = &'a String>,
    {
        let mut graph = Self::default();
        for (name, dependencies) in services {
            for dependency in dependencies {
                graph.add(name, dependency);
            }
        }
        graph
    }

    /// Records that `from` calls `to`.
    pub fn add(&mut self, from: &str, to: &str) {
        self.edges
            .entry(from.to_owned())
            .or_default()
            .push(to.to_owned());
        self.edges.entry(to.to_owned()).or_default();
    }

    /// The first cycle found, if any (deterministic: services in name order).
    pub fn check_acyclic(&self) -> Result<(), Cycle> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        fn visit<'a>(
            graph: &'a BTreeMap<String, Vec<String>>,
            node: &'a str,
            marks: &mut BTreeMap<&'a str, Mark>,
            path: &mut Vec<&'a str>,
        ) -> Result<(), Cycle> {
            marks.insert(node, Mark::OnPath);
            path.push(node);
            for next in graph.get(node).into_iter().flatten() {
                match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                    Mark::OnPath => {
                        let start = path.iter().position(|n| *n == next).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[start..].iter().map(|s| s.to_string()).collect();
                        cycle.push(next.clone());
                        return Err(Cycle { path: cycle });
                    }
                    Mark::New => visit(graph, next, marks, path)?,
                    Mark::Done => {}
                }
            }
            path.pop();
            marks.insert(node, Mark::Done);
            Ok(())
        }
        let mut marks = BTreeMap::new();
        for node in self.edges.keys() {
            if marks.get(node.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
                visit(&self.edges, node, &mut marks, &mut Vec::new())?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for DependencyGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (from, to) in &self.edges {
            writeln!(f, "{from} -> [{}]", to.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acyclic_graph_passes_and_cycles_are_named() {
        let mut graph = DependencyGraph::default();
        graph.add("gateway", "locator");
        graph.add("message", "locator");
        graph.add("message", "gateway");
        assert_eq!(graph.check_acyclic(), Ok(()));
        // message already calls locator: the loop closed by this edge is the one found
        graph.add("locator", "message");
        let cycle = graph.check_acyclic().unwrap_err();
        assert_eq!(cycle.path, ["locator", "message", "locator"]);
        assert_eq!(
            cycle.to_string(),
            "dependency cycle: locator -> message -> locator"
        );
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let mut graph = DependencyGraph::default();
        graph.add("order", "order");
        assert_eq!(graph.check_acyclic().unwrap_err().path, ["order", "order"]);
    }
}
