//! Dates as the sources write them: "28 de junio de 2021", "febrero 20, 2024",
//! "2025-07-02 10:59:00 -0600".

use std::sync::LazyLock;

use jiff::civil::Date;
use regex::Regex;

/// Spanish month names, January first ("setiembre" is an accepted spelling).
const MONTHS: [&[&str]; 12] = [
    &["enero"],
    &["febrero"],
    &["marzo"],
    &["abril"],
    &["mayo"],
    &["junio"],
    &["julio"],
    &["agosto"],
    &["septiembre", "setiembre"],
    &["octubre"],
    &["noviembre"],
    &["diciembre"],
];

/// Month number (1-12) of a Spanish month name, any case.
pub fn month_number(name: &str) -> Option<i8> {
    let name = name.to_lowercase();
    MONTHS
        .iter()
        .position(|names| names.contains(&name.as_str()))
        .map(|i| i as i8 + 1)
}

static FORMS: LazyLock<Regex> = LazyLock::new(|| {
    let month = "enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre";
    Regex::new(&format!(
        r"(?i)\b(?:(?P<d1>\d{{1,2}})\s+de\s+(?P<m1>{month})\s+(?:de(?:l)?\s+)?(?P<y1>\d{{4}})|(?P<m2>{month})\s+(?P<d2>\d{{1,2}}),?\s+(?:de\s+)?(?P<y2>\d{{4}})|(?P<y3>\d{{4}})-(?P<m3>\d{{2}})-(?P<d3>\d{{2}}))\b"
    ))
    .expect("the date pattern is valid")
});

/// The first valid date written anywhere in `text`, in any of the three forms.
pub fn find_date(text: &str) -> Option<Date> {
    FORMS.captures_iter(text).find_map(|c| {
        let num = |name: &str| c.name(name).map(|m| m.as_str());
        let (year, month, day) = if let Some(y) = num("y1") {
            (y, month_number(num("m1")?)?, num("d1")?)
        } else if let Some(y) = num("y2") {
            (y, month_number(num("m2")?)?, num("d2")?)
        } else {
            (num("y3")?, num("m3")?.parse().ok()?, num("d3")?)
        };
        Date::new(year.parse().ok()?, month, day.parse().ok()?).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn every_form_the_sources_use() {
        assert_eq!(find_date("28 de junio de 2021"), Some(date(2021, 6, 28)));
        assert_eq!(
            find_date("Presidencia de la República | 02 de julio de 2025"),
            Some(date(2025, 7, 2))
        );
        assert_eq!(find_date("febrero 20, 2024"), Some(date(2024, 2, 20)));
        assert_eq!(
            find_date("2026-08-06 10:21:00 -0600"),
            Some(date(2026, 8, 6))
        );
        assert_eq!(find_date("1 de Setiembre del 2019"), Some(date(2019, 9, 1)));
    }

    #[test]
    fn impossible_or_missing_dates_are_none() {
        assert_eq!(find_date("31 de febrero de 2021"), None);
        assert_eq!(find_date("Presidencia de la República"), None);
        assert_eq!(find_date("2021-13-01"), None);
    }
}
