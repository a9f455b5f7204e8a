//! Environment entries (`KEY=VALUE`): which names are valid and how a list
//! with repeated keys collapses. One rule for the host, which refuses a bad
//! name before a VM boots, and for the guest, which builds the workload's
//! environment and every exec's from such lists.

/// Whether `name` can name an environment variable: not empty, and no `=`
/// or NUL, either of which would end it early inside `KEY=VALUE` or a C
/// string. The rule itself lives in lodge-common, shared with the host.
pub use lodge_common::env::is_valid_name;

/// The key of a `KEY=VALUE` entry (the whole entry when it has no `=`).
pub fn key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// `entries` with repeated keys collapsed: a later entry's value wins but
/// keeps the position of the key's first entry (as docker does).
pub fn collapse<'a>(entries: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    for entry in entries {
        let k = key(entry);
        match env.iter_mut().find(|e| key(e) == k) {
            Some(existing) => existing.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn names_must_be_non_empty_without_equals_or_nul() {
        assert!(is_valid_name("PATH"));
        assert!(is_valid_name("with space"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("A=B"));
        assert!(!is_valid_name("A\0"));
    }

    #[test]
    fn keys_end_at_the_first_equals() {
        assert_eq!(key("A=b=c"), "A");
        assert_eq!(key("A="), "A");
        assert_eq!(key("A"), "A");
    }

    #[test]
    fn later_values_win_in_the_first_position() {
        let entries = strings(&["A=1", "B=2", "A=3", "C", "C=4"]);
        assert_eq!(collapse(&entries), strings(&["A=3", "B=2", "C=4"]));
    }
}
