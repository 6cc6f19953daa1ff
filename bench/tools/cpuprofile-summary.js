// Summarise V8 CPU profiles (from POSTERN_PROFILE_DIR, docs/master.md): self time per function, inclusive time per file.
// usage: node bench/tools/cpuprofile-summary.js FILE.cpuprofile...
const fs=require('fs');
for (const f of process.argv.slice(2)) {
  const p=JSON.parse(fs.readFileSync(f));
  const byId=new Map(p.nodes.map(n=>[n.id,n]));
  const self=new Map(); const dt=p.timeDeltas; let total=0;
  const counts=new Map();
  p.samples.forEach((id,i)=>{counts.set(id,(counts.get(id)||0)+(dt[i]||0)); total+=dt[i]||0;});
  // self time by function+url
  for (const [id,t] of counts){const n=byId.get(id); const k=`${n.callFrame.functionName||'(anon)'} ${n.callFrame.url.replace(/.*node_modules\//,'nm/').replace(/.*packages\//,'pk/')}:${n.callFrame.lineNumber}`; self.set(k,(self.get(k)||0)+t);}
  // total time inclusive by url file
  const parent=new Map(); for (const n of p.nodes) for (const c of (n.children||[])) parent.set(c,n.id);
  const incl=new Map();
  for (const [id,t] of counts){ let cur=id; const seen=new Set(); while(cur!==undefined){const n=byId.get(cur); const k=n.callFrame.url.replace(/.*node_modules\//,'nm/').replace(/.*packages\//,'pk/').replace(/^node:/,'node:'); if(!seen.has(k)){seen.add(k);incl.set(k,(incl.get(k)||0)+t);} cur=parent.get(cur);} }
  const title = [...self.keys()].find(k=>k.includes('pk/'))||'';
  console.log('==', f, 'total ms', (total/1000).toFixed(0));
  console.log(' self top:'); [...self].sort((a,b)=>b[1]-a[1]).slice(0,12).forEach(([k,t])=>console.log('   ',(t/1000).toFixed(0),k));
  console.log(' inclusive by file:'); [...incl].filter(([k])=>k).sort((a,b)=>b[1]-a[1]).slice(0,10).forEach(([k,t])=>console.log('   ',(t/1000).toFixed(0),k));
}
