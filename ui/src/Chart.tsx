import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface Series {
  label: string;
  values: (number | null)[];
  color: string;
  bars?: boolean;
}

/** A time chart (x in seconds since the epoch, drawn in the viewer's zone) that fills its box. */
export function Chart({ title, unit, x, series, range }: { title: string; unit: string; x: number[]; series: Series[]; range?: [number, number] }) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const bars = uPlot.paths.bars?.({ size: [0.8, 40] });
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: 180,
      legend: { live: true },
      // The window asked for, not just the span of the points (one point would span years).
      scales: { x: range ? { time: true, range: () => range } : { time: true } },
      axes: [{ stroke: "currentColor", grid: { stroke: "rgba(128,128,128,0.2)" } }, { stroke: "currentColor", label: unit, grid: { stroke: "rgba(128,128,128,0.2)" } }],
      series: [
        {},
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          fill: s.bars ? s.color + "66" : undefined,
          width: 1.5,
          spanGaps: false,
          paths: s.bars ? bars : undefined,
        })),
      ],
    };
    const plot = new uPlot(opts, [x, ...series.map((s) => s.values)] as uPlot.AlignedData, el);
    const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(200, el.clientWidth), height: 180 }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.destroy();
    };
  }, [x, series, range]);
  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      <div ref={box} role="img" aria-label={`${title}: ${x.length} points`} data-points={x.length} />
    </figure>
  );
}
