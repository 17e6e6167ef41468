//! Rewrites that take a token out of a request before it goes upstream
//! (`forwardToken: false`): a cookie from a `Cookie` header, a parameter from a query.

/// The `Cookie` header without the named cookie; `None` when nothing is left.
pub fn remove_cookie(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split('=').next().map(str::trim) != Some(name))
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("; "))
    }
}

/// The path with every occurrence of the query parameter removed (name compared after
/// percent-decoding, as extraction does).
pub fn remove_query_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            percent_decode(key).as_deref() != Some(name)
        })
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// Decodes `%XX` escapes and `+` (form encoding); `None` for invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_the_only_cookie_drops_the_header() {
        assert_eq!(remove_cookie("session=abc", "session"), None);
    }

    #[test]
    fn removing_one_cookie_keeps_the_others_in_order() {
        assert_eq!(remove_cookie("a=1; session=abc;b=2", "session").as_deref(), Some("a=1; b=2"));
        assert_eq!(remove_cookie("sessionx=1", "session").as_deref(), Some("sessionx=1"));
    }

    #[test]
    fn query_parameter_is_removed_including_encoded_names() {
        assert_eq!(remove_query_param("/p?access_token=x&a=1", "access_token"), "/p?a=1");
        assert_eq!(remove_query_param("/p?access%5Ftoken=x", "access_token"), "/p");
        assert_eq!(remove_query_param("/p?a=1", "access_token"), "/p?a=1");
        assert_eq!(remove_query_param("/p", "access_token"), "/p");
    }

    #[test]
    fn percent_decoding_tolerates_broken_escapes() {
        assert_eq!(percent_decode("a%2"), Some("a%2".to_string()));
        assert_eq!(percent_decode("%zz"), Some("%zz".to_string()));
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("a+b%20c"), Some("a b c".to_string()));
    }
}
