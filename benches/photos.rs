//! Test pictures for the image benchmarks, made here rather than downloaded.

/// A photo-like picture: smooth gradients, a few discs and sensor-like noise, so that it
/// compresses about as a photograph does (flat colour would decode unrealistically fast,
/// pure noise unrealistically slowly).
pub fn photo_like(seed: u32) -> image::RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 17) as f32 - 8.0
    };
    let discs: Vec<(f32, f32, f32, [f32; 3])> = (0..6)
        .map(|k| {
            let k = (seed * 7 + k) as f32;
            (
                (k * 97.0) % 640.0,
                (k * 61.0) % 480.0,
                30.0 + (k * 13.0) % 90.0,
                [(k * 37.0) % 255.0, (k * 71.0) % 255.0, (k * 23.0) % 255.0],
            )
        })
        .collect();
    image::RgbImage::from_fn(640, 480, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let mut colour = [
            128.0 + 90.0 * (fx / 97.0 + seed as f32).sin(),
            128.0 + 90.0 * (fy / 71.0).cos(),
            128.0 + 60.0 * ((fx + fy) / 151.0).sin(),
        ];
        for (cx, cy, r, disc) in &discs {
            if (fx - cx).powi(2) + (fy - cy).powi(2) < r * r {
                colour = *disc;
            }
        }
        image::Rgb(colour.map(|c| (c + noise()).clamp(0.0, 255.0) as u8))
    })
}
