//! RFC 3339 times in UTC for the audit CLI (`--since 2026-01-31T12:00:00Z`, and the
//! times `audit list` prints), to and from Unix milliseconds. Civil-date arithmetic
//! after H. Hinnant's `days_from_civil` / `civil_from_days` (proleptic Gregorian).

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (or `+00:00`) to Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 UTC time (like 2026-01-31T12:00:00Z)");
    let body = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix('z'))
        .or_else(|| text.strip_suffix("+00:00"))
        .ok_or_else(bad)?;
    let (date, time) = body.split_once(['T', 't']).ok_or_else(bad)?;
    let (time, fraction) = time.split_once('.').unwrap_or((time, ""));
    let number = |text: &str, range: std::ops::Range<usize>| -> Result<u64, String> {
        let part = text.get(range).ok_or_else(bad)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let separators_ok = date.len() == 10
        && time.len() == 8
        && date.get(4..5) == Some("-")
        && date.get(7..8) == Some("-")
        && time.get(2..3) == Some(":")
        && time.get(5..6) == Some(":");
    if !separators_ok {
        return Err(bad());
    }
    let (year, month, day) = (number(date, 0..4)?, number(date, 5..7)?, number(date, 8..10)?);
    let (hour, minute, second) = (number(time, 0..2)?, number(time, 3..5)?, number(time, 6..8)?);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let millis = match fraction {
        "" => 0,
        f if f.bytes().all(|b| b.is_ascii_digit()) => {
            let first3: String = f.chars().chain("000".chars()).take(3).collect();
            first3.parse::<u64>().map_err(|_| bad())?
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let days = u64::try_from(days).map_err(|_| bad())?;
    Ok(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Unix milliseconds to `YYYY-MM-DDTHH:MM:SS.fffZ`.
pub fn format_rfc3339_ms(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let in_day = ms % 86_400_000;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (second, millis) = (in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_times_convert_both_ways() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339_ms("2000-03-01T00:00:00Z").unwrap(), 951_868_800_000);
        assert_eq!(parse_rfc3339_ms("2026-12-04T04:07:57.5+00:00").unwrap(), 1_796_357_277_500);
        for ms in [0, 951_868_800_000, 1_796_357_277_500, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)).unwrap(), ms);
        }
        assert_eq!(format_rfc3339_ms(1_796_357_277_500), "2026-12-04T04:07:57.500Z");
    }

    #[test]
    fn malformed_times_are_refused() {
        for text in [
            "2026-12-04",
            "2026-12-04T04:07:57",
            "2026-13-01T00:00:00Z",
            "2026-1-01T00:00:00Z",
            "2026-12-04T04:07:57+02:00",
            "x",
        ] {
            assert!(parse_rfc3339_ms(text).is_err(), "{text}");
        }
    }
}
