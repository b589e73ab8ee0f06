//! Role-based access control from RBAC manifests, enough to hold eks-remedy to the roles it
//! ships: ClusterRoles bound by ClusterRoleBindings (cluster-wide) or RoleBindings (one
//! namespace), rules with apiGroups, resources (with subresources), verbs and resourceNames.

use serde::Deserialize;

use super::server::User;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Subject {
    kind: String,
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoleRef {
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    subjects: Vec<Subject>,
    #[serde(default)]
    role_ref: Option<RoleRef>,
}

/// The authorizer: who may do what.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    roles: Vec<(String, Vec<Rule>)>,
    /// (role, subjects, namespace of a RoleBinding or None for cluster-wide)
    bindings: Vec<(String, Vec<Subject>, Option<String>)>,
}

/// One request to authorize.
pub struct Access<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl Rbac {
    /// Parses one or more YAML documents of ClusterRoles and bindings.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let docs: Vec<Document> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
        let mut rbac = Self::default();
        for doc in docs {
            match doc.kind.as_str() {
                "ClusterRole" | "Role" => rbac.roles.push((doc.metadata.name, doc.rules)),
                "ClusterRoleBinding" => rbac.bindings.push((
                    doc.role_ref.map(|r| r.name).unwrap_or_default(),
                    doc.subjects,
                    None,
                )),
                "RoleBinding" => rbac.bindings.push((
                    doc.role_ref.map(|r| r.name).unwrap_or_default(),
                    doc.subjects,
                    Some(doc.metadata.namespace.unwrap_or_else(|| "default".into())),
                )),
                other => return Err(format!("unexpected kind {other} in an RBAC manifest")),
            }
        }
        Ok(rbac)
    }

    /// Whether `user` may perform `access`.
    pub fn allows(&self, user: &User, access: &Access<'_>) -> bool {
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        let resource = if access.subresource.is_empty() {
            access.resource.to_owned()
        } else {
            format!("{}/{}", access.resource, access.subresource)
        };
        self.bindings.iter().any(|(role, subjects, namespace)| {
            let bound = subjects.iter().any(|s| match s.kind.as_str() {
                "Group" => user.groups.contains(&s.name),
                "User" => user.name == s.name,
                _ => false,
            });
            let in_scope = namespace
                .as_deref()
                .is_none_or(|ns| access.namespace == Some(ns));
            bound
                && in_scope
                && self
                    .roles
                    .iter()
                    .filter(|(name, _)| name == role)
                    .any(|(_, rules)| {
                        rules.iter().any(|r| {
                            let any = |list: &[String], value: &str| {
                                list.iter().any(|x| x == "*" || x == value)
                            };
                            any(&r.api_groups, access.group)
                                && any(&r.resources, &resource)
                                && any(&r.verbs, access.verb)
                                && (r.resource_names.is_empty()
                                    || access
                                        .name
                                        .is_some_and(|n| r.resource_names.iter().any(|x| x == n)))
                        })
                    })
        })
    }
}
