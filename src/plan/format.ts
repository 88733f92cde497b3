/** 1234567 -> "1,234,567": counts in progress lines and the UI. */
export function formatCount(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}
