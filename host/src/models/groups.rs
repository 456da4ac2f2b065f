//! Parameter groups of the models: each group has its own learning rate and frozen state.
//! By default a group is a part of the model (a tower, a projection, a head); with
//! `--group-by layer` each tower is split into its layers (`vision.embeddings`, `vision.0` …
//! `vision.11`, `vision.post`), so that a policy can set a rate per depth (layer-wise decay).
//! The towers are transformer encoders named as in Hugging Face (`embeddings`,
//! `encoder.layers.N`, then the final norm), which is what a name's depth is read from.

use serde::{Deserialize, Serialize};

/// How parameters are split into groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// One group per tower, projection and head.
    #[default]
    Part,
    /// One group per layer of each tower (embeddings, each block, what follows the last
    /// block), and one per projection and head.
    Layer,
}

/// A parameter group as the policies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    /// `vision` or `text` for a tower's groups, the group's own name otherwise.
    pub tower: String,
    /// The group's layer and the tower's count of layers, for a group of one layer:
    /// 0 is the embeddings, `count - 1` what follows the last block.
    pub depth: Option<(u32, u32)>,
}

/// Where a parameter sits in a tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TowerPart {
    /// The embeddings and any norm before the first block.
    Embeddings,
    /// Transformer block N, from 0.
    Block(usize),
    /// The final norm, and whatever the task trains with the tower after it.
    After,
}

impl TowerPart {
    /// The part of a tower a parameter belongs to, from its name inside the tower
    /// (`encoder.layers.3.mlp.fc1.weight`, `embeddings.patch_embedding.weight`).
    pub fn of(name_in_tower: &str) -> TowerPart {
        if let Some(rest) = name_in_tower.strip_prefix("encoder.layers.")
            && let Some(Ok(block)) = rest.split('.').next().map(str::parse)
        {
            return TowerPart::Block(block);
        }
        if name_in_tower.starts_with("embeddings.") || name_in_tower.starts_with("pre_lay") {
            TowerPart::Embeddings
        } else {
            TowerPart::After
        }
    }
}

/// Where a parameter belongs: a part of a tower, or a group outside the towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Tower(usize, TowerPart),
    Head(usize),
}

/// The groups of a model made of transformer towers and heads.
#[derive(Debug, Clone)]
pub struct GroupLayout {
    by: GroupBy,
    /// Each tower's name and count of blocks.
    towers: Vec<(&'static str, usize)>,
    groups: Vec<Group>,
}

impl GroupLayout {
    /// Groups for `towers` (name, blocks) followed by `heads`, in that order.
    pub fn new(by: GroupBy, towers: &[(&'static str, usize)], heads: &[&'static str]) -> Self {
        let mut groups = Vec::new();
        for &(tower, blocks) in towers {
            let group = |name: String, depth| Group { name, tower: tower.to_string(), depth };
            match by {
                GroupBy::Part => groups.push(group(tower.to_string(), None)),
                GroupBy::Layer => {
                    let count = blocks as u32 + 2;
                    groups.push(group(format!("{tower}.embeddings"), Some((0, count))));
                    groups.extend((0..blocks).map(|b| group(format!("{tower}.{b}"), Some((b as u32 + 1, count)))));
                    groups.push(group(format!("{tower}.post"), Some((count - 1, count))));
                }
            }
        }
        groups.extend(heads.iter().map(|head| Group { name: head.to_string(), tower: head.to_string(), depth: None }));
        GroupLayout { by, towers: towers.to_vec(), groups }
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The index of the group of a parameter at `place`; `None` for a block past the
    /// tower's count (a name the model does not have).
    pub fn index(&self, place: Place) -> Option<usize> {
        let tower_groups = |tower: usize| match self.by {
            GroupBy::Part => 1,
            GroupBy::Layer => self.towers[tower].1 + 2,
        };
        match place {
            Place::Tower(tower, part) => {
                let first: usize = (0..tower).map(tower_groups).sum();
                let offset = match (self.by, part) {
                    (GroupBy::Part, _) | (GroupBy::Layer, TowerPart::Embeddings) => 0,
                    (GroupBy::Layer, TowerPart::Block(block)) if block < self.towers[tower].1 => block + 1,
                    (GroupBy::Layer, TowerPart::Block(_)) => return None,
                    (GroupBy::Layer, TowerPart::After) => self.towers[tower].1 + 1,
                };
                Some(first + offset)
            }
            Place::Head(head) => Some((0..self.towers.len()).map(tower_groups).sum::<usize>() + head),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_read_from_hugging_face_names() {
        assert_eq!(TowerPart::of("embeddings.patch_embedding.weight"), TowerPart::Embeddings);
        assert_eq!(TowerPart::of("pre_layrnorm.weight"), TowerPart::Embeddings);
        assert_eq!(TowerPart::of("encoder.layers.11.mlp.fc1.bias"), TowerPart::Block(11));
        assert_eq!(TowerPart::of("post_layernorm.weight"), TowerPart::After);
        assert_eq!(TowerPart::of("final_layer_norm.bias"), TowerPart::After);
    }

    #[test]
    fn layers_get_a_group_each_with_their_depth() {
        let layout = GroupLayout::new(GroupBy::Layer, &[("vision", 2), ("text", 1)], &["projection"]);
        let names: Vec<&str> = layout.groups().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "vision.embeddings",
                "vision.0",
                "vision.1",
                "vision.post",
                "text.embeddings",
                "text.0",
                "text.post",
                "projection"
            ]
        );
        let depths: Vec<Option<(u32, u32)>> = layout.groups().iter().map(|g| g.depth).collect();
        assert_eq!(depths[..4], [Some((0, 4)), Some((1, 4)), Some((2, 4)), Some((3, 4))]);
        assert_eq!(depths[4..], [Some((0, 3)), Some((1, 3)), Some((2, 3)), None]);
        assert_eq!(layout.groups()[5].tower, "text");
        assert_eq!(layout.index(Place::Tower(0, TowerPart::Block(1))), Some(2));
        assert_eq!(layout.index(Place::Tower(1, TowerPart::After)), Some(6));
        assert_eq!(layout.index(Place::Head(0)), Some(7));
        assert_eq!(layout.index(Place::Tower(1, TowerPart::Block(1))), None);
    }

    #[test]
    fn parts_keep_one_group_per_tower() {
        let layout = GroupLayout::new(GroupBy::Part, &[("vision", 12), ("text", 12)], &["projection", "logit_scale"]);
        let names: Vec<&str> = layout.groups().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["vision", "text", "projection", "logit_scale"]);
        assert_eq!(layout.index(Place::Tower(1, TowerPart::Block(7))), Some(1));
        assert_eq!(layout.index(Place::Head(1)), Some(3));
        assert!(layout.groups().iter().all(|g| g.depth.is_none()));
    }
}
