//! Naming parameter groups in policy arguments. A name is a group (`vision`, `vision.3`) or a
//! tower (`vision`), so that `vision=0.1` means the same whether the run groups its
//! parameters by part (one `vision` group) or by layer (`vision.embeddings`, `vision.0` …).

use crate::RunSpec;

/// The groups an argument's name stands for: the group of that name, or else every group of
/// the tower of that name; an error naming the argument and the choices when there is none.
pub fn named(spec: &RunSpec, argument: &str, name: &str) -> Result<Vec<usize>, String> {
    if let Some(group) = spec.groups.iter().position(|group| group.name == name) {
        return Ok(vec![group]);
    }
    let tower: Vec<usize> = (0..spec.groups.len()).filter(|&g| spec.groups[g].tower == name).collect();
    if tower.is_empty() {
        return Err(format!(
            "argument `{argument}`: no group or tower `{name}` (choose from {})",
            names(spec).join(", ")
        ));
    }
    Ok(tower)
}

/// Every name an argument may use: the groups, then the towers that are not also a group.
pub fn names(spec: &RunSpec) -> Vec<&str> {
    let mut names: Vec<&str> = spec.groups.iter().map(|group| group.name.as_str()).collect();
    for group in &spec.groups {
        if !names.contains(&group.tower.as_str()) {
            names.push(&group.tower);
        }
    }
    names
}
