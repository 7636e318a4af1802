//! Resolving a container's user from the image's `/etc/passwd` and `/etc/group`
//! (containerd's `WithUser`/`WithUserID`/`WithAdditionalGIDs`).
//!
//! Precedence: `run_as_user` (uid) > `run_as_username` > the image's `User` (`uid`,
//! `name`, `uid:gid`, `name:group`); `run_as_group` overrides the gid, and is refused without
//! `run_as_user` or `run_as_username` (the CRI API); the additional gids
//! are the groups of /etc/group listing the user as a member, plus `supplemental_groups`.

use super::SpecError;

/// The uid/gid a process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 || l.starts_with('#') {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Who the process runs as. `passwd`/`group`: the image's files (None when absent).
pub fn resolve(
    run_as_user: Option<i64>,
    run_as_username: &str,
    image_user: &str,
    run_as_group: Option<i64>,
    supplemental_groups: &[i64],
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, SpecError> {
    // The CRI API: run_as_group only together with run_as_user or run_as_username (the
    // image's user does not count), else the runtime must refuse the container.
    if let Some(g) = run_as_group
        && run_as_user.is_none()
        && run_as_username.is_empty()
    {
        return Err(super::invalid(
            "security_context.run_as_group",
            format!("{g} is set without run_as_user or run_as_username"),
        ));
    }
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");
    let (user_part, group_part) = if let Some(uid) = run_as_user {
        (Some(to_id("run_as_user", uid)?.to_string()), None)
    } else if !run_as_username.is_empty() {
        (Some(run_as_username.to_owned()), None)
    } else if !image_user.is_empty() {
        match image_user.split_once(':') {
            Some((u, g)) => (Some(u.to_owned()), Some(g.to_owned())),
            None => (Some(image_user.to_owned()), None),
        }
    } else {
        (None, None)
    };

    let (mut uid, mut gid, name) = match user_part.as_deref() {
        None => (0, 0, Some("root".to_owned())),
        Some(u) => match u.parse::<u32>() {
            // A numeric uid need not exist in /etc/passwd (gid 0 then).
            Ok(uid) => match passwd_entries(passwd).find(|e| e.uid == uid) {
                Some(e) => (uid, e.gid, Some(e.name.to_owned())),
                None => (uid, 0, None),
            },
            Err(_) => match passwd_entries(passwd).find(|e| e.name == u) {
                Some(e) => (e.uid, e.gid, Some(u.to_owned())),
                None => return Err(SpecError::UnknownUser { user: u.to_owned() }),
            },
        },
    };
    if user_part.is_none() {
        uid = 0;
    }
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, id, _)| id)
                .ok_or(SpecError::UnknownGroup { group: g.clone() })?,
        };
    }
    if let Some(g) = run_as_group {
        gid = to_id("run_as_group", g)?;
    }
    let mut additional = vec![gid];
    if let Some(name) = &name {
        for (_, id, members) in group_entries(group) {
            if members.contains(&name.as_str()) && !additional.contains(&id) {
                additional.push(id);
            }
        }
    }
    for &g in supplemental_groups {
        let g = to_id("supplemental_groups", g)?;
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    // The CRI fields were checked above; what the image's User, /etc/passwd or /etc/group
    // gave is checked here.
    for id in [uid, gid].iter().chain(&additional) {
        to_id("image user", i64::from(*id))?;
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// The largest uid or gid a container may run as: ids above it are negative as a signed
/// `int32`, which runc and the kernel's user namespace code read differently (the
/// CVE-2024-40635 fix, as containerd).
pub const MAX_ID: u32 = i32::MAX as u32;

/// A CRI uid/gid field as an id, refusing negative ones and ones above [`MAX_ID`].
pub fn to_id(field: &'static str, v: i64) -> Result<u32, SpecError> {
    u32::try_from(v)
        .ok()
        .filter(|id| *id <= MAX_ID)
        .ok_or_else(|| super::invalid(field, format!("{v} is not a valid id (0 to {MAX_ID})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1001::/home/web:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwebg:x:1001:\nextra:x:2000:web,other\nother:x:3000:other\n";

    #[test]
    fn precedence_and_lookup() {
        let r = |u: Option<i64>, name: &str, img: &str, g: Option<i64>| {
            resolve(u, name, img, g, &[], Some(PASSWD), Some(GROUP))
        };
        assert_eq!(
            r(None, "", "", None).unwrap(),
            ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![0]
            }
        );
        let web = r(None, "", "web", None).unwrap();
        assert_eq!((web.uid, web.gid), (1000, 1001));
        assert_eq!(web.additional_gids, [1001, 2000]);
        assert_eq!(
            r(Some(1000), "", "root", None).unwrap().gid,
            1001,
            "run_as_user wins over the image user"
        );
        assert_eq!(
            r(None, "web", "", Some(5)).unwrap().gid,
            5,
            "run_as_group overrides"
        );
        let numeric = r(Some(4242), "", "", None).unwrap();
        assert_eq!((numeric.uid, numeric.gid), (4242, 0));
        assert_eq!(r(None, "", "1000:extra", None).unwrap().gid, 2000);
        assert_eq!(r(None, "", "1000:77", None).unwrap().gid, 77);
        assert!(matches!(
            r(None, "nobody", "", None),
            Err(SpecError::UnknownUser { .. })
        ));
        assert!(matches!(
            r(None, "", "web:nogroup", None),
            Err(SpecError::UnknownGroup { .. })
        ));
        assert!(r(Some(-1), "", "", None).is_err());
    }

    #[test]
    fn run_as_group_without_a_user_is_refused() {
        let r = |u: Option<i64>, name: &str, img: &str| {
            resolve(u, name, img, Some(5), &[], Some(PASSWD), Some(GROUP))
        };
        for (u, name, img) in [(None, "", ""), (None, "", "web")] {
            let e = r(u, name, img).unwrap_err();
            assert!(
                matches!(
                    e,
                    SpecError::Invalid {
                        field: "security_context.run_as_group",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        assert_eq!(r(Some(1000), "", "").unwrap().gid, 5);
        assert_eq!(r(None, "web", "").unwrap().gid, 5);
    }

    #[test]
    fn ids_above_int32_are_refused() {
        let big = i64::from(MAX_ID) + 1;
        let r = |u: Option<i64>, img: &str, g: Option<i64>, sup: &[i64]| {
            resolve(u, "", img, g, sup, Some(PASSWD), Some(GROUP))
        };
        assert_eq!(r(Some(i64::from(MAX_ID)), "", None, &[]).unwrap().uid, MAX_ID);
        for (what, res) in [
            ("run_as_user", r(Some(big), "", None, &[])),
            ("run_as_user", r(Some(4294967295), "", None, &[])),
            ("run_as_group", r(Some(1), "", Some(big), &[])),
            ("supplemental_groups", r(Some(1), "", None, &[big])),
            ("image user", r(None, "4294967295", None, &[])),
            ("image user", r(None, "1:2147483648", None, &[])),
        ] {
            let e = res.unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
            assert!(matches!(e, SpecError::Invalid { .. }), "{e:?}");
        }
        let huge_gid = "big:x:5:2147483648::/:/bin/sh\n";
        assert!(resolve(None, "", "big", None, &[], Some(huge_gid), None).is_err());
    }

    #[test]
    fn supplemental_groups_are_added_once() {
        let u = resolve(None, "web", "", None, &[2000, 9], Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(u.additional_gids, [1001, 2000, 9]);
        // No passwd at all: names cannot resolve, numbers can.
        assert!(resolve(None, "web", "", None, &[], None, None).is_err());
        assert_eq!(resolve(Some(7), "", "", None, &[], None, None).unwrap().uid, 7);
    }
}
